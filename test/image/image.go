// Package image builds the klock image in Go, with the layout the
// Dockerfile gives it, for machines without a Docker engine: the tests and
// the end-to-end harness import it into containerd from a tarball.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The layout, which the Dockerfile's final stage must match (see
// TestDockerfileAgrees).
const (
	KlockPath   = "/klock"
	WebhookPath = "/klock-webhook"
	User        = "65532:65532"
)

// Entrypoint is the image's ENTRYPOINT: the webhook. The init container
// that wrapped pods get runs /klock instead.
var Entrypoint = []string{WebhookPath}

// Build returns the image for platform: the klock and klock-webhook
// binaries given, as one layer on an empty base.
func Build(klockBin, webhookBin string, platform v1.Platform) (v1.Image, error) {
	var files []File
	for _, f := range []struct{ dst, src string }{{KlockPath, klockBin}, {WebhookPath, webhookBin}} {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return nil, err
		}
		files = append(files, File{Path: f.dst, Mode: 0o755, Data: data})
	}
	return FromFiles(files, platform, v1.Config{User: User, Entrypoint: Entrypoint})
}

// File is one entry of an image layer: a regular file, a directory (Dir)
// or a symbolic link (Linkname).
type File struct {
	Path     string
	Mode     int64
	Data     []byte
	Linkname string
	Dir      bool
}

// FromFiles returns an image for platform whose one layer holds files,
// on an empty base, with cfg as its config (entrypoint, user, ...).
// Every entry has the same time, so the same files make the same image.
func FromFiles(files []File, platform v1.Platform, cfg v1.Config) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: strings.TrimPrefix(path.Clean(f.Path), "/"), Mode: f.Mode, ModTime: time.Unix(0, 0)}
		switch {
		case f.Dir:
			hdr.Typeflag = tar.TypeDir
		case f.Linkname != "":
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, f.Linkname
		default:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = platform.OS, platform.Architecture, platform.Variant
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// WriteTarball writes img, tagged tag, as a tarball that
// `ctr images import` and `docker load` accept.
func WriteTarball(file, tag string, img v1.Image) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("tag %q: %w", tag, err)
	}
	return tarball.WriteToFile(file, ref, img)
}
