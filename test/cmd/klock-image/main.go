// Command klock-image builds the klock image from built binaries into a
// tarball: make image-tarball.
package main

import (
	"flag"
	"fmt"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/klock-io/klock/test/image"
)

func main() {
	klock := flag.String("klock", "bin/klock", "the klock binary")
	webhook := flag.String("webhook", "bin/klock-webhook", "the klock-webhook binary")
	platform := flag.String("platform", "linux/amd64", "the binaries' platform")
	tag := flag.String("tag", "ghcr.io/klock-io/klock:dev", "the image's tag")
	out := flag.String("o", "bin/klock-image.tar", "the tarball to write")
	flag.Parse()
	if err := build(*klock, *webhook, *platform, *tag, *out); err != nil {
		fmt.Fprintln(os.Stderr, "klock-image:", err)
		os.Exit(1)
	}
}

func build(klock, webhook, platform, tag, out string) error {
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		return err
	}
	img, err := image.Build(klock, webhook, *p)
	if err != nil {
		return err
	}
	return image.WriteTarball(out, tag, img)
}
