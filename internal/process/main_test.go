package process

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// helperEnv makes the test binary run helperMain instead of the tests: a
// program that runs a Runner as klock does, for tests that must kill it or
// start it with a signal ignored.
const helperEnv = "KLOCK_PROCESS_TEST_HELPER"

func TestMain(m *testing.M) {
	RunIfSupervisor()
	// A program built with -race sleeps a second before it exits while
	// other goroutines remain, as the supervisor's do; the supervisors that
	// the tests start, copies of this binary, need not.
	if _, ok := os.LookupEnv("GORACE"); !ok {
		_ = os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	if script, ok := os.LookupEnv(helperEnv); ok {
		os.Exit(helperMain(script, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// helperMain runs `sh -c script args...` as klock runs its command, and
// exits with its exit code.
func helperMain(script string, args []string) int {
	sigs := make(chan os.Signal, 8)
	Notify(sigs, Forwarded...)
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, helperEnv+"=") })
	r := &Runner{Signals: sigs, StopSignal: syscall.SIGTERM}
	code, err := r.Run(context.Background(), append([]string{"sh", "-c", script}, args...), env)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return code
}
