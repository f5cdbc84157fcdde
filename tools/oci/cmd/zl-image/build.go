package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
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

func runBuild(args []string) int {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	out := fs.String("out", "", "archive to write (required)")
	name := fs.String("name", "", "image reference recorded in the archive, e.g. ghcr.io/kube-zen/zen-lead:0.1.0 (required)")
	entrypoint := fs.String("entrypoint", "", "entrypoint (comma-separated argv)")
	user := fs.String("user", "65532:65532", "user:group the image runs as")
	var adds multiFlag
	fs.Var(&adds, "add", "SRC:DST[:MODE] file to put in the image (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *out == "" || *name == "" || len(adds) == 0 {
		fmt.Fprintln(os.Stderr, "zl-image build: --out, --name and at least one --add are required")
		return 2
	}
	digest, err := buildImage(*out, *name, *entrypoint, *user, adds)
	if err != nil {
		fmt.Fprintf(os.Stderr, "zl-image build: %v\n", err)
		return 1
	}
	fmt.Printf("zl-image: %s -> %s (%s)\n", *name, *out, digest)
	return 0
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// A fixed timestamp keeps the archive reproducible: same inputs, same digest.
var epoch = time.Unix(0, 0)

// buildImage writes the archive and returns the image's manifest digest. The
// reference only goes into index.json's annotations, so the same files under
// two names have the same manifest digest.
func buildImage(out, name, entrypoint, user string, adds []string) (string, error) {
	layer, diffID, err := buildLayer(user, adds)
	if err != nil {
		return "", err
	}
	cfg := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.UTC().Format(time.RFC3339),
		"config": map[string]any{
			"User":       user,
			"Env":        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	}
	if entrypoint != "" {
		cfg["config"].(map[string]any)["Entrypoint"] = strings.Split(entrypoint, ",")
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return "", err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", cfgJSON),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)},
	})
	if err != nil {
		return "", err
	}
	md := descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
	// The tag follows the last ':' after the last '/' (a registry's port
	// is not a tag).
	colon := strings.LastIndex(name, ":")
	if colon < strings.LastIndex(name, "/") || colon == len(name)-1 {
		return "", fmt.Errorf("--name %q has no tag (want repository:tag)", name)
	}
	tag := name[colon+1:]
	md["annotations"] = map[string]string{
		"io.containerd.image.name":          name,
		"org.opencontainers.image.ref.name": tag,
	}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []any{md}})
	if err != nil {
		return "", err
	}
	entries := []entry{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(digestOf(layer)), layer},
		{blobPath(digestOf(cfgJSON)), cfgJSON},
		{blobPath(digestOf(manifest)), manifest},
	}
	if err := writeArchive(out, entries); err != nil {
		return "", err
	}
	return md["digest"].(string), nil
}

// buildLayer returns the gzipped layer and its diff ID (the digest of the
// uncompressed tar). Go's gzip writes no time or name into the header, so
// the compressed bytes depend only on the tar and the Go version.
func buildLayer(user string, adds []string) ([]byte, string, error) {
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
			return nil, "", fmt.Errorf("--add %q: want SRC:DST[:MODE]", a)
		}
		data, err := os.ReadFile(parts[0])
		if err != nil {
			return nil, "", fmt.Errorf("--add %q: %w", a, err)
		}
		dst := strings.TrimPrefix(path.Clean(parts[1]), "/")
		mode := int64(0o644)
		if len(parts) == 3 {
			m, err := strconv.ParseInt(parts[2], 8, 32)
			if err != nil {
				return nil, "", fmt.Errorf("--add %q: mode: %w", a, err)
			}
			mode = m
		}
		files[dst], modes[dst] = data, mode
	}

	// Directories first (parents before children), then files, each sorted.
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
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
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
			return nil, "", err
		}
	}
	for _, f := range sortedKeys(files) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f, Mode: modes[f], Size: int64(len(files[f])), ModTime: epoch}); err != nil {
			return nil, "", err
		}
		if _, err := tw.Write(files[f]); err != nil {
			return nil, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	if err != nil {
		return nil, "", err
	}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), digestOf(raw.Bytes()), nil
}

type entry struct {
	name string
	data []byte
}

func writeArchive(out string, entries []entry) error {
	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	aw := tar.NewWriter(f)
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
	return os.Rename(out+".tmp", out)
}

func blobPath(digest string) string {
	return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:")
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func descriptor(mediaType string, b []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": digestOf(b), "size": len(b)}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
