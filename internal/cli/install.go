package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// install copies the running klock binary to dest, for images that have no
// cp or shell (the klock image is distroless): an init container runs
// `klock install /klock-bin/klock` to put klock into a volume it shares with
// the container klock wraps. The copy is written beside dest and renamed
// over it, so that a reader never sees half a binary.
func install(dest string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("cannot find the running klock binary: %w", err)
	}
	src, err := os.Open(self)
	if err != nil {
		return fmt.Errorf("cannot read the running klock binary: %w", err)
	}
	defer src.Close()

	dir := filepath.Dir(dest)
	tmp, err := os.CreateTemp(dir, ".klock-*")
	if err != nil {
		return fmt.Errorf("cannot install into %s: %w", dir, err)
	}
	done := false
	defer func() {
		if !done {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, src); err != nil {
		return errors.Join(fmt.Errorf("cannot write %s: %w", tmp.Name(), err), tmp.Close())
	}
	if err := tmp.Chmod(0o555); err != nil {
		return errors.Join(fmt.Errorf("cannot make %s executable: %w", tmp.Name(), err), tmp.Close())
	}
	if err := tmp.Sync(); err != nil {
		return errors.Join(fmt.Errorf("cannot write %s: %w", tmp.Name(), err), tmp.Close())
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cannot write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return fmt.Errorf("cannot install %s: %w", dest, err)
	}
	done = true
	return nil
}
