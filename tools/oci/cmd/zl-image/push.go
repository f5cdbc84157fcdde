package main

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func runPush(args []string) int {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	insecure := fs.Bool("insecure", false, "talk plain HTTP to the registry (a local registry without TLS)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "zl-image push: want ARCHIVE REF, e.g. zl-image push target/image/zen-lead.oci.tar registry.example.com/zen-lead:0.1.0")
		return 2
	}
	archive, target := fs.Arg(0), fs.Arg(1)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	digest, err := push(ctx, archive, target, *insecure)
	if err != nil {
		fmt.Fprintf(os.Stderr, "zl-image push: %v\n", err)
		return 1
	}
	fmt.Printf("zl-image: pushed %s@%s\n", target, digest)
	return 0
}

func push(ctx context.Context, archive, target string, insecure bool) (string, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(target, opts...)
	if err != nil {
		return "", fmt.Errorf("%q is not an image reference (want registry/repository:tag): %w", target, err)
	}
	dir, err := os.MkdirTemp("", "zl-image-push-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	if err := extract(archive, dir); err != nil {
		return "", fmt.Errorf("%s: %w", archive, err)
	}
	index, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return "", fmt.Errorf("%s is not an OCI image layout archive: %w", archive, err)
	}
	im, err := index.IndexManifest()
	if err != nil {
		return "", fmt.Errorf("%s: index.json: %w", archive, err)
	}
	if len(im.Manifests) != 1 {
		return "", fmt.Errorf("%s holds %d images; push wants exactly one", archive, len(im.Manifests))
	}
	img, err := index.Image(im.Manifests[0].Digest)
	if err != nil {
		return "", fmt.Errorf("%s: image %s: %w", archive, im.Manifests[0].Digest, err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithUserAgent("zen-lead zl-image")); err != nil {
		return "", fmt.Errorf("pushing to %s: %w", ref, err)
	}
	return im.Manifests[0].Digest.String(), nil
}

// extract unpacks an OCI layout archive: regular files and directories only,
// every path inside dir.
func extract(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		clean := filepath.Clean(hdr.Name)
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("entry %q points outside the archive", hdr.Name)
		}
		dst := filepath.Join(dir, clean)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			out, err := os.Create(dst)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, tr); err != nil {
				out.Close()
				return err
			}
			if err := out.Close(); err != nil {
				return err
			}
		default:
			return fmt.Errorf("entry %q: only files and directories belong in an OCI layout", hdr.Name)
		}
	}
}

func runDigest(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "zl-image digest: want ARCHIVE")
		return 2
	}
	digest, err := manifestDigest(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "zl-image digest: %s: %v\n", args[0], err)
		return 1
	}
	fmt.Println(digest)
	return 0
}

// manifestDigest reads index.json from the archive and returns its one
// image's manifest digest.
func manifestDigest(archive string) (string, error) {
	f, err := os.Open(archive)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("no index.json: not an OCI layout archive")
		}
		if err != nil {
			return "", err
		}
		if filepath.Clean(hdr.Name) != "index.json" {
			continue
		}
		var index struct {
			Manifests []struct {
				Digest string `json:"digest"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(tr).Decode(&index); err != nil {
			return "", fmt.Errorf("index.json: %w", err)
		}
		if len(index.Manifests) != 1 {
			return "", fmt.Errorf("index.json lists %d images, want 1", len(index.Manifests))
		}
		return index.Manifests[0].Digest, nil
	}
}
