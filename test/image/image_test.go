package image

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/klock-io/klock/test/framework"
)

// finalStage reads what the Dockerfile's last stage puts where: COPY
// destinations, USER and ENTRYPOINT.
func finalStage(t *testing.T) (copies []string, user string, entrypoint []string) {
	t.Helper()
	f, err := os.Open(filepath.Join(framework.RepoRoot(), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM": // a new stage: only the last one counts
			copies, user, entrypoint = nil, "", nil
		case "COPY":
			copies = append(copies, fields[len(fields)-1])
		case "USER":
			user = fields[1]
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(strings.TrimSpace(strings.TrimPrefix(sc.Text(), fields[0]))), &entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT is not in exec form: %v", err)
			}
		}
	}
	return copies, user, entrypoint
}

func TestDockerfileAgrees(t *testing.T) {
	copies, user, entrypoint := finalStage(t)
	dir := t.TempDir()
	for _, f := range []string{"klock", "klock-webhook"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("#!/bin/true "+f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img, err := Build(filepath.Join(dir, "klock"), filepath.Join(dir, "klock-webhook"), v1.Platform{OS: "linux", Architecture: "arm64"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != user || !slices.Equal(cfg.Config.Entrypoint, entrypoint) {
		t.Errorf("user %q and entrypoint %q, the Dockerfile says %q and %q", cfg.Config.User, cfg.Config.Entrypoint, user, entrypoint)
	}
	if cfg.OS != "linux" || cfg.Architecture != "arm64" {
		t.Errorf("platform %s/%s, want linux/arm64", cfg.OS, cfg.Architecture)
	}

	// The files, from a written tarball as containerd would read it.
	file := filepath.Join(dir, "klock.tar")
	if err := WriteTarball(file, "ghcr.io/klock-io/klock:test", img); err != nil {
		t.Fatal(err)
	}
	loaded, err := tarball.ImageFromPath(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := loaded.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (err %v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var files []string
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Mode&0o111 == 0 {
			t.Errorf("%s is not executable", hdr.Name)
		}
		files = append(files, "/"+hdr.Name)
	}
	slices.Sort(files)
	slices.Sort(copies)
	if diff := cmp.Diff(copies, files); diff != "" {
		t.Errorf("files in the image (-Dockerfile,+builder):\n%s", diff)
	}
	if !slices.Contains(files, KlockPath) || !slices.Contains(files, WebhookPath) {
		t.Errorf("files %v, want %s and %s", files, KlockPath, WebhookPath)
	}
}
