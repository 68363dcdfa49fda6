// Command demo starts a local control plane and shows two klock runs
// contending for one Lease: the second waits, then runs the moment the
// first one releases; then a counting lock of two holders with two more
// runs queued, as klock status shows them; then the webhook. Run it with
// `make demo`.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klock-io/klock/test/framework"
)

var start = time.Now()

func say(who, format string, args ...any) {
	fmt.Printf("%6.2fs  %-5s %s\n", time.Since(start).Seconds(), who, fmt.Sprintf(format, args...))
}

func main() {
	klockBin := flag.String("klock", "", "path to the klock binary")
	flag.Parse()
	if err := run(*klockBin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(klockBin string) error {
	say("demo", "starting kube-apiserver and etcd")
	cp, err := framework.Start()
	if err != nil {
		return err
	}
	defer cp.Stop()
	say("demo", "control plane ready")
	if err := lockDemo(cp, klockBin); err != nil {
		return err
	}
	if err := countingDemo(cp, klockBin); err != nil {
		return err
	}
	return webhookDemo(cp, klockBin)
}

// lockDemo: two klock runs contend for one Lease.
func lockDemo(cp *framework.ControlPlane, klockBin string) error {
	fmt.Println("\n== Two klock runs, one lease ==")

	script := `echo "got the lock as $KLOCK_HOLDER_IDENTITY, fencing token $KLOCK_FENCING_TOKEN"; sleep "$1"; echo "done"`
	var wg sync.WaitGroup
	runKlock := func(who, seconds string) error {
		cmd := exec.Command(klockBin, "--kubeconfig", cp.Kubeconfig, "-l", "nightly-report", "-i", who,
			"--", "sh", "-c", script, "sh", seconds)
		say(who, "$ klock -l nightly-report -i %s -- sh -c '...; sleep %s'", who, seconds)
		return runShown(&wg, who, cmd)
	}

	if err := runKlock("A", "3"); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	if err := runKlock("B", "1"); err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond)
	lease, err := cp.Client.CoordinationV1().Leases("default").Get(context.Background(), "nightly-report", metav1.GetOptions{})
	if err != nil {
		return err
	}
	say("demo", "Lease default/nightly-report is held by %s; B waits, watching it", *lease.Spec.HolderIdentity)
	wg.Wait()

	lease, err = cp.Client.CoordinationV1().Leases("default").Get(context.Background(), "nightly-report", metav1.GetOptions{})
	if err != nil {
		return err
	}
	say("demo", "Lease now: holder %q (released), leaseTransitions %d, labels %v", *lease.Spec.HolderIdentity, *lease.Spec.LeaseTransitions, lease.Labels)
	return nil
}

// countingDemo: five renders under a lock of two holders; the others queue
// and go in the order they came. klock status shows it while it happens.
func countingDemo(cp *framework.ControlPlane, klockBin string) error {
	fmt.Println("\n== A counting lock: at most 2 renders at once, the others in the order they came ==")
	script := `echo "rendering as $KLOCK_HOLDER_IDENTITY (token $KLOCK_FENCING_TOKEN)"; sleep "$1"; echo "rendered"`
	var wg sync.WaitGroup
	for i, who := range []string{"R1", "R2", "R3", "R4", "R5"} {
		cmd := exec.Command(klockBin, "--kubeconfig", cp.Kubeconfig, "-l", "render", "--max-holders", "2", "-i", who,
			"--", "sh", "-c", script, "sh", "2")
		if i == 0 {
			say(who, "$ klock -l render --max-holders 2 -i %s -- sh -c '...; sleep 2'  (and so on, R1 to R5)", who)
		}
		if err := runShown(&wg, who, cmd); err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond) // so that they queue in this order
	}
	time.Sleep(500 * time.Millisecond)
	say("demo", "$ klock status render")
	status := exec.Command(klockBin, "status", "--kubeconfig", cp.Kubeconfig, "render")
	out, err := status.CombinedOutput()
	fmt.Print(string(out))
	if err != nil {
		return fmt.Errorf("klock status: %w", err)
	}
	wg.Wait()
	return nil
}

// runShown runs cmd, printing its output and how it ended under who.
func runShown(wg *sync.WaitGroup, who string, cmd *exec.Cmd) error {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	wg.Go(func() {
		prefix(who, out)
		if err := cmd.Wait(); err != nil {
			say(who, "klock: %v", err)
			return
		}
		say(who, "klock exited 0 and released the lease")
	})
	return nil
}

func prefix(who string, r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		say(who, "%s", sc.Text())
	}
}
