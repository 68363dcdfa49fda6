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
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for dst, src := range map[string]string{KlockPath: klockBin, WebhookPath: webhookBin} {
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Name: path.Clean(dst)[1:], Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Variant = platform.OS, platform.Architecture, platform.Variant
	cfg.Config.User = User
	cfg.Config.Entrypoint = Entrypoint
	return mutate.ConfigFile(img, cfg)
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
