// zl-image builds zen-lead's images as OCI archives without a Docker engine
// and pushes them to registries.
//
//	zl-image build --out x.tar --name ghcr.io/kube-zen/zen-lead:0.1.0 \
//	    --add target/.../zen-lead:/usr/local/bin/zen-lead:0755 \
//	    --entrypoint /usr/local/bin/zen-lead --user 65532:65532
//	zl-image push [--insecure] x.tar registry.example.com/team/zen-lead:0.1.0
//	zl-image digest x.tar
//
// An archive is an OCI image layout in a tar (what `ctr images import`,
// skopeo's `oci-archive:` and kind/k3d/minikube image loaders read).
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var code int
	switch os.Args[1] {
	case "build":
		code = runBuild(os.Args[2:])
	case "push":
		code = runPush(os.Args[2:])
	case "digest":
		code = runDigest(os.Args[2:])
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "zl-image: unknown command %q\n", os.Args[1])
		usage()
		code = 2
	}
	os.Exit(code)
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  zl-image build --out ARCHIVE --name REF --add SRC:DST[:MODE]... [--entrypoint PATH] [--user UID:GID]
      assemble a single-layer image from files; same inputs, same digest
  zl-image push [--insecure] ARCHIVE REF
      push the archive's image to REF (credentials: ~/.docker/config.json,
      as written by docker/podman/crane login; --insecure: plain HTTP)
  zl-image digest ARCHIVE
      print the manifest digest of the archive's image
`)
}
