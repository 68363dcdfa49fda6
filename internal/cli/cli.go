// Package cli implements the klock command line: flags, help, exit codes,
// and the run that holds a Lease while a command runs.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/klock-io/klock/internal/version"
)

// Exit codes of klock's own. The command's own status passes through
// otherwise, and --conflict-exit-code (default 1) means the lock was not
// acquired.
const (
	ExitLost    = 124 // the lock was lost while the command ran
	ExitFailure = 125 // klock failed: bad usage, no cluster, no permission
	// 126 and 127: the command could not be run, or was not found.
)

// ExitError carries the exit code klock ends with, and what to say on stderr
// (nothing when Err is nil).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Streams are the standard streams klock and its command use.
type Streams struct {
	In       io.Reader
	Out, Err io.Writer
}

// RunFunc does the work once the command line is parsed. Run is the real
// one; tests pass their own to check parsing without touching a cluster.
type RunFunc func(ctx context.Context, o *Options, s Streams) error

// Execute parses args (without the program name) and calls run. The
// subcommands, `install DEST` and `status ...`, are recognised only as the
// first argument: `klock -- status ...` runs a command called status under
// the lock.
func Execute(ctx context.Context, args []string, s Streams, run RunFunc) error {
	if len(args) > 0 && args[0] == "status" {
		return executeStatus(ctx, "klock", args[1:], s)
	}
	if len(args) > 0 && args[0] == "install" {
		if len(args) != 2 || args[1] == "" {
			return &ExitError{Code: ExitFailure, Err: errors.New("usage: klock install DEST: copies this klock binary to the path DEST")}
		}
		if err := install(args[1]); err != nil {
			return &ExitError{Code: ExitFailure, Err: err}
		}
		return nil
	}
	o := NewOptions()
	fs := pflag.NewFlagSet("klock", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)  // errors are returned, and printed once by Exit
	fs.SetInterspersed(false) // the first argument that is no flag starts the command
	fs.SortFlags = false
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("%w (see klock --help)", err)}
	}
	switch {
	case o.Help:
		fmt.Fprint(s.Out, usage(fs))
		return nil
	case o.Version:
		fmt.Fprintf(s.Out, "klock %s\n", version.Version)
		return nil
	}
	o.Command = fs.Args()
	if err := o.Validate(); err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	return run(ctx, o, s)
}

// Exit prints err's message, if any, as one line on stderr and returns the
// exit code for it.
func Exit(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var exit *ExitError
	if !errors.As(err, &exit) {
		exit = &ExitError{Code: ExitFailure, Err: err}
	}
	if exit.Err != nil {
		fmt.Fprintf(stderr, "klock: %v\n", exit.Err)
	}
	return exit.Code
}
