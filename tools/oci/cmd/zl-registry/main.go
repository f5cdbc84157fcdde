// zl-registry is the CNCF distribution registry (github.com/distribution/
// distribution/v3) built with its local-disk storage driver only: the local
// test cluster's registry needs no cloud storage, auth or pull-through proxy,
// and leaving them out keeps the build small.
//
//	zl-registry serve config.yml
package main

import (
	"os"

	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	// distribution always sets up OpenTelemetry; without an exporter named it
	// would send traces to an OTLP collector on localhost that is not there.
	if os.Getenv("OTEL_TRACES_EXPORTER") == "" {
		_ = os.Setenv("OTEL_TRACES_EXPORTER", "none")
	}
	if err := registry.RootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}
