// Command probe is the command the integration tests run under klock. It
// records when it starts and ends, with what klock passed it, into a log
// that many probes append to at once, and detects overlap with a marker
// file created exclusively, so that mutual exclusion is checked without
// trusting clocks.
//
// A marker file stays behind when a probe is killed with SIGKILL, so the
// fault tests, which kill holders, use -lockfile instead: an flock(2) that
// the kernel drops when the last process holding it dies, however it dies.
// With -shared several probes of one command (a shell and the children it
// starts) hold it together, and a probe of any other command that starts
// while one of them is still alive records the overlap.
package main

import (
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// lockFile holds the -lockfile lock; a global, so that no finalizer closes
// it early.
var lockFile *os.File

func main() {
	var (
		logPath  = flag.String("log", "", "append events to this file")
		name     = flag.String("name", "probe", "name to record")
		marker   = flag.String("marker", "", "marker file held exclusively while running")
		sleep    = flag.Duration("sleep", 0, "how long to run")
		exit     = flag.Int("exit", 0, "exit code")
		trap     = flag.Bool("trap", false, "on SIGTERM or SIGINT, record it and exit with 100+N")
		argvPath = flag.String("argv", "", "write the arguments after the flags here, hex-encoded, and exit")
		pidPath  = flag.String("pid", "", "write the PID here")
		lockPath = flag.String("lockfile", "", "hold an flock on this file while running; failing to get it at once is an overlap")
		shared   = flag.Bool("shared", false, "take the -lockfile lock shared, with the other probes of the same command")
	)
	flag.Parse()
	if *argvPath != "" {
		// Hex, one argument a line, so that any byte survives the trip.
		var out strings.Builder
		for _, a := range flag.Args() {
			out.WriteString(hex.EncodeToString([]byte(a)) + "\n")
		}
		must(os.WriteFile(*argvPath, []byte(out.String()), 0o644))
		return
	}
	sigs := make(chan os.Signal, 1)
	if *trap {
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	}
	if *pidPath != "" {
		must(os.WriteFile(*pidPath, []byte(fmt.Sprint(os.Getpid())), 0o644))
	}
	record(*logPath, "start", *name, os.Getenv("KLOCK_FENCING_TOKEN"), os.Getenv("KLOCK_HOLDER_IDENTITY"), os.Getenv("KLOCK_LEASE"), os.Getenv("KLOCK_LEASE_NAMESPACE"))
	if *marker != "" {
		f, err := os.OpenFile(*marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			record(*logPath, "overlap", *name)
		} else {
			_ = f.Close()
		}
	}
	if *lockPath != "" {
		how := syscall.LOCK_EX
		if *shared {
			how = syscall.LOCK_SH
		}
		f, err := os.OpenFile(*lockPath, os.O_CREATE|os.O_RDWR, 0o644)
		must(err)
		if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
			record(*logPath, "overlap", *name, "lockfile")
		}
		lockFile = f // kept open, and so locked, until the process is gone
	}
	select {
	case <-time.After(*sleep):
	case sig := <-sigs:
		record(*logPath, "signal", *name, sig.String())
		if *marker != "" {
			_ = os.Remove(*marker)
		}
		record(*logPath, "end", *name)
		os.Exit(100 + int(sig.(syscall.Signal)))
	}
	if *marker != "" {
		_ = os.Remove(*marker)
	}
	record(*logPath, "end", *name)
	os.Exit(*exit)
}

// record appends one line: event name unix-nanoseconds fields... A single
// write to an O_APPEND file is atomic with respect to other appenders.
func record(path, event, name string, fields ...string) {
	if path == "" {
		return
	}
	line := fmt.Sprintf("%s %s %d", event, name, time.Now().UnixNano())
	for _, f := range fields {
		if f == "" {
			f = "-" // keep the fields of every line in place
		}
		line += " " + f
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	must(err)
	_, err = f.WriteString(line + "\n")
	must(err)
	must(f.Close())
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(99)
	}
}
