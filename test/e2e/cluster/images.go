package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/klock-io/klock/test/image"
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

// imageOf is an image for this host's platform with files as its one
// layer and cfg's entrypoint, command, user and environment.
func imageOf(files []image.File, cfg v1.Config) (v1.Image, error) {
	return image.FromFiles(files, v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}, cfg)
}

// PauseImage is the sandbox image: the pause binary given (a static
// build of test/e2e/pause).
func PauseImage(pauseBin string) (v1.Image, error) {
	data, err := os.ReadFile(pauseBin)
	if err != nil {
		return nil, err
	}
	return imageOf([]image.File{{Path: "/pause", Mode: 0o755, Data: data}}, v1.Config{Entrypoint: []string{"/pause"}, User: "65535:65535"})
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
	files := []image.File{
		{Path: "/bin", Mode: 0o755, Dir: true},
		{Path: busybox, Mode: 0o755, Data: data},
		{Path: "/etc", Mode: 0o755, Dir: true},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnobody:x:65534:\n")},
		{Path: "/root", Mode: 0o700, Dir: true},
		{Path: "/tmp", Mode: 0o1777, Dir: true},
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" {
			files = append(files, image.File{Path: "/bin/" + applet, Mode: 0o777, Linkname: "busybox"})
		}
	}
	cfg.Env = append(cfg.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	return imageOf(files, cfg)
}
