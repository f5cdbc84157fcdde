// pause is the local cluster's pod sandbox image: it holds the pod's
// namespaces open and exits on SIGTERM/SIGINT. Built here because the cluster
// has no registry to pull registry.k8s.io/pause from.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
