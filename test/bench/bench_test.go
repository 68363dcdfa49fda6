// Package bench measures klock against a real kube-apiserver and etcd on
// this machine: handoff latency, takeover after a killed holder, the
// overhead of klock on an uncontended command, API requests of an idle
// waiter, and the size of the binary. Run it with `make bench`.
package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klock-io/klock/klock"
	"github.com/klock-io/klock/test/framework"
)

var (
	cp   *framework.ControlPlane
	bins framework.Binaries
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	return framework.Main(m, func(env *framework.Env) {
		cp, bins = env.ControlPlane, env.Binaries
	})
}

// klockCmd returns a klock command against the control plane.
func klockCmd(ns string, args []string, command ...string) *exec.Cmd {
	argv := append([]string{"--kubeconfig", cp.Kubeconfig, "-n", ns}, args...)
	cmd := exec.Command(bins.Klock, append(append(argv, "--"), command...)...)
	cmd.Stderr = os.Stderr
	return cmd
}

func namespace(b *testing.B) string {
	ns, err := cp.CreateNamespace(context.Background(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	return ns
}

// stamps reads "kind name unixnano ..." lines the probe writes.
func stamps(b *testing.B, path string) map[string]time.Time {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]time.Time{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		ns, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		out[f[0]+" "+f[1]] = time.Unix(0, ns)
	}
	return out
}

func waitForFile(b *testing.B, path, substr string) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if data, _ := os.ReadFile(path); strings.Contains(string(data), substr) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s never showed %q", path, substr)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// report adds the median and 99th percentile of samples as metrics.
func report(b *testing.B, name string, samples []time.Duration) {
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	p := func(q float64) time.Duration { return samples[min(len(samples)-1, int(q*float64(len(samples))))] }
	b.ReportMetric(ms(p(0.5)), name+"-p50-ms")
	b.ReportMetric(ms(p(0.99)), name+"-p99-ms")
	fmt.Printf("%-28s n=%-3d p50=%7.1fms p99=%7.1fms min=%7.1fms max=%7.1fms\n", name, len(samples), ms(p(0.5)), ms(p(0.99)), ms(samples[0]), ms(samples[len(samples)-1]))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkHandoff: the holder's command exits, the waiter's starts.
func BenchmarkHandoff(b *testing.B) {
	ns := namespace(b)
	var samples []time.Duration
	for i := range 50 {
		log := filepath.Join(b.TempDir(), "log")
		lease := "handoff-" + strconv.Itoa(i%5)
		holder := klockCmd(ns, []string{"-l", lease}, bins.Probe, "-log", log, "-name", "a", "-sleep", "300ms")
		if err := holder.Start(); err != nil {
			b.Fatal(err)
		}
		waitForFile(b, log, "start a")
		waiter := klockCmd(ns, []string{"-l", lease}, bins.Probe, "-log", log, "-name", "b")
		if err := waiter.Start(); err != nil {
			b.Fatal(err)
		}
		if err := holder.Wait(); err != nil {
			b.Fatal(err)
		}
		if err := waiter.Wait(); err != nil {
			b.Fatal(err)
		}
		s := stamps(b, log)
		samples = append(samples, s["start b"].Sub(s["end a"]))
	}
	report(b, "handoff", samples)
}

// BenchmarkTakeover: the holder is SIGKILLed; the waiter may start only a
// lease duration after it last saw the holder renew. Reported: the time from
// the kill to the waiter's start, minus the lease duration.
func BenchmarkTakeover(b *testing.B) {
	ns := namespace(b)
	const duration = 2 * time.Second
	timings := []string{"--lease-duration", "2s", "--renew-deadline", "1500ms", "--retry-period", "300ms"}
	var samples []time.Duration
	for i := range 10 {
		log := filepath.Join(b.TempDir(), "log")
		args := append([]string{"-l", "takeover-" + strconv.Itoa(i)}, timings...)
		holder := klockCmd(ns, args, bins.Probe, "-log", log, "-name", "a", "-sleep", "1h")
		if err := holder.Start(); err != nil {
			b.Fatal(err)
		}
		waitForFile(b, log, "start a")
		waiter := klockCmd(ns, args, bins.Probe, "-log", log, "-name", "b")
		if err := waiter.Start(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(time.Second)
		killed := time.Now()
		_ = holder.Process.Signal(syscall.SIGKILL)
		_ = holder.Wait()
		if err := waiter.Wait(); err != nil {
			b.Fatal(err)
		}
		samples = append(samples, stamps(b, log)["start b"].Sub(killed)-duration)
	}
	report(b, "takeover-minus-duration", samples)
}

// BenchmarkUncontendedOverhead: `klock -- true` against `true`.
func BenchmarkUncontendedOverhead(b *testing.B) {
	ns := namespace(b)
	truePath, err := exec.LookPath("true")
	if err != nil {
		b.Fatal(err)
	}
	timeRun := func(cmd *exec.Cmd) time.Duration {
		start := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var plain, locked []time.Duration
	for range 50 {
		plain = append(plain, timeRun(exec.Command(truePath)))
		locked = append(locked, timeRun(klockCmd(ns, []string{"-l", "uncontended"}, truePath)))
	}
	slices.Sort(plain)
	var overhead []time.Duration
	for _, d := range locked {
		overhead = append(overhead, d-plain[len(plain)/2])
	}
	report(b, "true", plain)
	report(b, "klock-true", locked)
	report(b, "overhead", overhead)
}

// BenchmarkIdleWaiterRequests counts the API requests of a waiter blocked
// for a minute on a Lease whose holder renews every 2s: with a queue (it
// renews its place), and racing.
func BenchmarkIdleWaiterRequests(b *testing.B) {
	for _, order := range []klock.Order{klock.OrderFIFO, klock.OrderAny} {
		ns := namespace(b)
		ctx := context.Background()
		holder, err := klock.NewForConfig(cp.Config, klock.Config{Name: "idle", Namespace: ns, Identity: "holder", Order: order})
		if err != nil {
			b.Fatal(err)
		}
		h, err := holder.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}

		var requests atomic.Int64
		waiter, err := klock.NewForConfig(framework.CountRequests(cp.Config, &requests), klock.Config{Name: "idle", Namespace: ns, Identity: "waiter", Order: order})
		if err != nil {
			b.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { _, _ = waiter.Acquire(wctx); close(done) }()
		time.Sleep(5 * time.Second) // settled: it read the Leases and watches them
		startup := requests.Load()
		const window = time.Minute
		time.Sleep(window)
		perMinute := float64(requests.Load()-startup) / window.Minutes()
		cancel()
		<-done
		_ = h.Release(ctx)
		b.ReportMetric(float64(startup), string(order)+"-startup-requests")
		b.ReportMetric(perMinute, string(order)+"-requests/min")
		fmt.Printf("%-28s %d requests to start waiting, then %.1f requests/min\n", "idle waiter, order "+string(order), startup, perMinute)
	}
}

// waitQueued waits until n waiters of lock "turns" wait: with a queue, until
// they all have their places (fifty taking theirs at once contend for the
// one queue Lease for a few seconds); racing, a moment for their watches.
func waitQueued(b *testing.B, ns string, order klock.Order, n int) {
	if order == klock.OrderAny {
		time.Sleep(3 * time.Second)
		return
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		l, err := cp.Client.CoordinationV1().Leases(ns).Get(context.Background(), klock.QueueName("turns"), metav1.GetOptions{})
		if err == nil {
			if q, _ := klock.ParseQueue(l); len(q) == n {
				time.Sleep(time.Second) // their watches settle
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("%d waiters never all queued", n)
}

// BenchmarkQueueHandoff: 1, 10 and 50 waiters take turns on one lock, each
// holding it 10ms and then waiting again, queued or racing. Reported: the
// time from a holder's release to the next holder's acquisition, and the API
// requests of all of them per handoff, in that steady state (waiting again
// included). Each waiter has a client without client-side rate limits, as
// the klock CLI does.
func BenchmarkQueueHandoff(b *testing.B) {
	for _, order := range []klock.Order{klock.OrderFIFO, klock.OrderAny} {
		for _, waiters := range []int{1, 10, 50} {
			name := fmt.Sprintf("%s-%d", order, waiters)
			ns := namespace(b)
			ctx, cancel := context.WithCancel(context.Background())
			var requests atomic.Int64
			config := framework.CountRequests(cp.Config, &requests)
			config.QPS, config.Burst = 1000, 2000
			const handoffs = 100
			var (
				mu       sync.Mutex
				released time.Time
				samples  []time.Duration
				start    = make(chan struct{})
				counted  int64
				wg       sync.WaitGroup
			)
			for i := range waiters + 1 {
				l, err := klock.NewForConfig(config, klock.Config{Name: "turns", Namespace: ns, Identity: fmt.Sprintf("w%02d", i), Order: order})
				if err != nil {
					b.Fatal(err)
				}
				wg.Go(func() {
					if i > 0 {
						<-start
					}
					for {
						h, err := l.Acquire(ctx)
						if err != nil {
							return
						}
						mu.Lock()
						if !released.IsZero() {
							samples = append(samples, time.Since(released))
						}
						if len(samples) == 1 {
							counted = requests.Load() // from the first handoff on
						}
						enough := len(samples) > handoffs
						mu.Unlock()
						if enough {
							cancel()
						}
						if i == 0 && len(samples) == 0 {
							close(start)
							waitQueued(b, ns, order, waiters) // every waiter waits
						} else {
							time.Sleep(10 * time.Millisecond)
						}
						mu.Lock()
						released = time.Now()
						mu.Unlock()
						_ = h.Release(context.Background())
						if enough {
							return
						}
					}
				})
			}
			wg.Wait()
			cancel()
			mu.Lock()
			perHandoff := float64(requests.Load()-counted) / float64(len(samples)-1)
			mu.Unlock()
			report(b, "handoff-"+name, samples)
			b.ReportMetric(perHandoff, name+"-requests/handoff")
			fmt.Printf("%-28s %.1f API requests per handoff\n", "handoff-"+name, perHandoff)
		}
	}
}

// BenchmarkBinarySize builds klock as released and reports its size.
func BenchmarkBinarySize(b *testing.B) {
	out := filepath.Join(b.TempDir(), "klock")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./cmd/klock")
	cmd.Dir = framework.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if data, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%v\n%s", err, data)
	}
	fi, err := os.Stat(out)
	if err != nil {
		b.Fatal(err)
	}
	mb := float64(fi.Size()) / (1 << 20)
	b.ReportMetric(mb, "MiB")
	fmt.Printf("%-28s %.1f MiB (static, stripped)\n", "klock binary", mb)
}
