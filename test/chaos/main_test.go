// Package chaos is klock's fault suite: it runs the klock binary (and, for
// clock skew, the engine in process) against a real kube-apiserver and etcd
// while it injects faults: processes killed, connections cut, answers lost
// after the write committed, the API server and etcd restarted or stopped,
// the Lease deleted, clocks an hour apart.
//
// Every scenario asserts two invariants from what the guarded commands
// themselves recorded (test/internal/probe): no two commands are ever
// inside the lock at once (an flock the kernel checks, and fencing tokens
// strictly increasing in start order), and the lock is never stuck (after
// a fault clears, a waiter gets it within a bound the design gives, with
// generous slack for a shared machine). Timings are never asserted tighter
// than those bounds.
//
// `make chaos` runs every scenario at full size with -full; `make soak`
// runs the contention scenario at 10,000 acquisitions; `make test` runs
// the fast part (no restarts of the control plane, small contention). The
// suite starts a control plane of its own, so that restarting it disturbs
// no other package's tests, and prints a table of what it measured.
package chaos

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/klock-io/klock/test/framework"
)

var (
	full = flag.Bool("full", false, "run every scenario at full size, control-plane restarts included (make chaos)")
	// Contention size: 2,000 with -full, 100 without; make soak sets 10,000.
	acquisitions = flag.Int("acquisitions", 0, "acquisitions in the contention scenario (0: 2000 with -full, else 100)")
	contenders   = flag.Int("contenders", 0, "klock processes contending at once (0: 50 with -full, else 10)")
	klockFlag    = flag.String("klock", "", "run this klock binary instead of building one from the working tree")
)

var (
	cp       *framework.ControlPlane
	klockBin string
	probeBin string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	dir, err := os.MkdirTemp("", "klock-chaos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if klockBin = *klockFlag; klockBin == "" {
		if klockBin, err = framework.Build(dir, "github.com/klock-io/klock/cmd/klock"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if probeBin, err = framework.Build(dir, "github.com/klock-io/klock/test/internal/probe"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// A control plane of this package's own: the restart scenarios stop
	// and kill its processes.
	if cp, err = framework.StartWith(framework.Options{Restartable: true}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = cp.Stop() }()
	code := m.Run()
	printResults()
	return code
}

// result is a row of the table printed at the end of the run.
type result struct {
	scenario, did, bound, measured string
}

var results struct {
	sync.Mutex
	rows []result
}

// report adds a row to the results table: the scenario, what klock did,
// the bound the design gives and what was measured. A failed test's row
// says so.
func report(t *testing.T, scenario, did, bound, measured string) {
	if t.Failed() {
		did = "FAILED (see the test's log): " + did
	}
	results.Lock()
	defer results.Unlock()
	results.rows = append(results.rows, result{scenario, did, bound, measured})
}

// printResults prints the table as Markdown, ready for the README.
func printResults() {
	results.Lock()
	defer results.Unlock()
	if len(results.rows) == 0 {
		return
	}
	sort.SliceStable(results.rows, func(i, j int) bool { return results.rows[i].scenario < results.rows[j].scenario })
	var b strings.Builder
	b.WriteString("\nFault suite results:\n\n| scenario | what klock did | bound | measured |\n| --- | --- | --- | --- |\n")
	for _, r := range results.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.scenario, r.did, r.bound, r.measured)
	}
	fmt.Print(b.String())
}

// fullOnly skips t unless the suite runs at full size.
func fullOnly(t *testing.T) {
	t.Helper()
	if !*full {
		t.Skip("restarts the control plane: runs with -full (make chaos)")
	}
}

// tempDir is t.TempDir without failing the test when its removal fails: a
// process that wrongly survived a fault may still write there.
func tempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "klock-chaos-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return filepath.Clean(d)
}
