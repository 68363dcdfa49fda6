package cluster

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Import loads img into containerd's Kubernetes namespace under ref, for
// pods with imagePullPolicy Never or IfNotPresent.
func (c *Cluster) Import(ctx context.Context, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image name %q: %w", ref, err)
	}
	file := filepath.Join(c.Dir, "image-"+strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	if err := tarball.WriteToFile(file, tag, img); err != nil {
		return err
	}
	defer os.Remove(file)
	return c.ctr(ctx, "images", "import", "--no-unpack=false", file)
}

// file is one entry of an image layer.
type file struct {
	path     string
	mode     int64
	data     []byte
	linkname string // a symbolic link when set
	dir      bool
}

// Layer is an image layer holding files.
func layer(files []file) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: strings.TrimPrefix(f.path, "/"), Mode: f.mode, ModTime: time.Unix(0, 0)}
		switch {
		case f.dir:
			hdr.Typeflag = tar.TypeDir
		case f.linkname != "":
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, f.linkname
		default:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
}

// imageOf is an image for this host's platform with files as its one
// layer and cfg's entrypoint, command, user and environment.
func imageOf(files []file, cfg v1.Config) (v1.Image, error) {
	l, err := layer(files)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = runtime.GOOS, runtime.GOARCH
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// PauseImage is the sandbox image: the pause binary given (a static
// build of test/e2e/pause).
func PauseImage(pauseBin string) (v1.Image, error) {
	data, err := os.ReadFile(pauseBin)
	if err != nil {
		return nil, err
	}
	return imageOf([]file{{path: "/pause", mode: 0o755, data: data}}, v1.Config{Entrypoint: []string{"/pause"}, User: "65535:65535"})
}

// BusyboxImage is a busybox-style image without klock: Debian's static
// busybox with a link per applet in /bin, /tmp, and root in /etc/passwd.
// cfg sets its ENTRYPOINT, CMD and the rest; PATH is added.
func BusyboxImage(cfg v1.Config) (v1.Image, error) {
	const busybox = "/bin/busybox"
	data, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("%w: install busybox-static (make e2e does)", err)
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	files := []file{
		{path: "/bin", mode: 0o755, dir: true},
		{path: busybox, mode: 0o755, data: data},
		{path: "/etc", mode: 0o755, dir: true},
		{path: "/etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{path: "/etc/group", mode: 0o644, data: []byte("root:x:0:\nnobody:x:65534:\n")},
		{path: "/root", mode: 0o700, dir: true},
		{path: "/tmp", mode: 0o1777, dir: true},
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" {
			files = append(files, file{path: "/bin/" + applet, mode: 0o777, linkname: "busybox"})
		}
	}
	cfg.Env = append(cfg.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	return imageOf(files, cfg)
}
