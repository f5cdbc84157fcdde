package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// runImage assembles a single-layer OCI image archive (the layout
// `ctr images import` reads) from files on disk: the local cluster has no
// registry and no Docker engine, so images are built by hand.
//
//	zl-cluster image --out x.tar --name localhost/zen-lead:dev \
//	    --add target/release/zen-lead:/usr/local/bin/zen-lead:0755 \
//	    --entrypoint /usr/local/bin/zen-lead --user 65532:65532
func runImage(args []string) int {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	out := fs.String("out", "", "archive to write (required)")
	name := fs.String("name", "", "image reference, e.g. localhost/zen-lead:dev (required)")
	entrypoint := fs.String("entrypoint", "", "entrypoint (comma-separated argv)")
	user := fs.String("user", "65532:65532", "user:group the image runs as")
	var adds multiFlag
	fs.Var(&adds, "add", "SRC:DST[:MODE] file to put in the image (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *out == "" || *name == "" || len(adds) == 0 {
		fmt.Fprintln(os.Stderr, "image: --out, --name and at least one --add are required")
		return 2
	}
	if err := buildImage(*out, *name, *entrypoint, *user, adds); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		return 1
	}
	return 0
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// A fixed timestamp keeps the archive reproducible: same inputs, same digest.
var epoch = time.Unix(0, 0)

func buildImage(out, name, entrypoint, user string, adds []string) error {
	uid, gid := user, user
	if u, g, ok := strings.Cut(user, ":"); ok {
		uid, gid = u, g
	}
	files := map[string][]byte{
		"etc/passwd": []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n", uid, gid)),
		"etc/group":  []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%s:\n", gid)),
	}
	modes := map[string]int64{"etc/passwd": 0o644, "etc/group": 0o644}
	for _, a := range adds {
		parts := strings.Split(a, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return fmt.Errorf("--add %q: want SRC:DST[:MODE]", a)
		}
		data, err := os.ReadFile(parts[0])
		if err != nil {
			return fmt.Errorf("--add %q: %w", a, err)
		}
		dst := strings.TrimPrefix(path.Clean(parts[1]), "/")
		mode := int64(0o644)
		if len(parts) == 3 {
			m, err := strconv.ParseInt(parts[2], 8, 32)
			if err != nil {
				return fmt.Errorf("--add %q: mode: %w", a, err)
			}
			mode = m
		}
		files[dst], modes[dst] = data, mode
	}

	// The layer: directories first (parents before children), then files.
	dirs := map[string]bool{"tmp": true, "home/nonroot": true}
	for f := range files {
		for d := path.Dir(f); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		for p := path.Dir(d); p != "."; p = path.Dir(p) {
			dirs[p] = true
		}
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, d := range sortedKeys(dirs) {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: epoch}
		if d == "home/nonroot" {
			hdr.Uid, _ = strconv.Atoi(uid)
			hdr.Gid, _ = strconv.Atoi(gid)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
	}
	for _, f := range sortedKeys(files) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f, Mode: modes[f], Size: int64(len(files[f])), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := tw.Write(files[f]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerDigest := digest(layer.Bytes())

	cfg := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.UTC().Format(time.RFC3339),
		"config": map[string]any{
			"User":       user,
			"Env":        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	}
	if entrypoint != "" {
		cfg["config"].(map[string]any)["Entrypoint"] = strings.Split(entrypoint, ",")
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", cfgJSON),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar", layer.Bytes())},
	})
	if err != nil {
		return err
	}
	md := descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
	tag := name[strings.LastIndex(name, ":")+1:]
	md["annotations"] = map[string]string{
		"io.containerd.image.name":          name,
		"org.opencontainers.image.ref.name": tag,
	}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []any{md}})
	if err != nil {
		return err
	}

	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	aw := tar.NewWriter(f)
	entries := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"blobs/sha256/" + strings.TrimPrefix(layerDigest, "sha256:"), layer.Bytes()},
		{"blobs/sha256/" + strings.TrimPrefix(digest(cfgJSON), "sha256:"), cfgJSON},
		{"blobs/sha256/" + strings.TrimPrefix(digest(manifest), "sha256:"), manifest},
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := aw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	for _, e := range entries {
		if err := aw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := aw.Write(e.data); err != nil {
			return err
		}
	}
	if err := aw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Printf("image: %s -> %s (%s, layer %d bytes)\n", name, out, md["digest"], layer.Len())
	return os.Rename(out+".tmp", out)
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func descriptor(mediaType string, b []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": digest(b), "size": len(b)}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
