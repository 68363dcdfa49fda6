package integration

import (
	"context"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/klock-io/klock/klock"
	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook/gate"
	"github.com/klock-io/klock/webhook/server"
	"github.com/klock-io/klock/webhook/wrap"
)

// gatedPod is a pod that asks to wait for lock at the scheduler, with the
// short lease timings of the other tests (its klock, and the reservation
// made for it, use them).
func gatedPod(name, lock string, extra ...string) *corev1.Pod {
	a := map[string]string{
		wrap.AnnotationLease: lock, wrap.AnnotationGate: "true",
		wrap.AnnotationLeaseDuration: "2s", wrap.AnnotationRenewDeadline: "1500ms", wrap.AnnotationRetryPeriod: "300ms",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		a[extra[i]] = extra[i+1]
	}
	return pod(name, a, container("app", "/app"))
}

func createPod(t *testing.T, ns string, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	got, err := cp.Client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func getPod(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	p, err := cp.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func isGated(t *testing.T, ns, name string) bool {
	t.Helper()
	return wrap.Gated(getPod(t, ns, name))
}

// gatedOnly reports which of the pods are still gated, in order.
func gatedOnly(t *testing.T, ns string, names ...string) []string {
	t.Helper()
	var out []string
	for _, n := range names {
		if isGated(t, ns, n) {
			out = append(out, n)
		}
	}
	return out
}

// podEvents returns the reasons and notes of the events about pod name.
func podEvents(t *testing.T, ns, name string) []string {
	t.Helper()
	list, err := cp.Client.EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out = append(out, e.Reason+": "+e.Note)
		}
	}
	return out
}

func hasEvent(t *testing.T, ns, name, reason, text string) bool {
	return slices.ContainsFunc(podEvents(t, ns, name), func(e string) bool {
		return strings.HasPrefix(e, reason+": ") && strings.Contains(e, text)
	})
}

var _ = eventsv1.SchemeGroupVersion // the events read are events.k8s.io/v1

// startsAs is the pod's klock starting: a contender under the pod's name,
// with the pod's timings.
func startsAs(t *testing.T, ns, lock, pod string, maxHolders int) *klock.Hold {
	t.Helper()
	cfg := fastConfig(ns, lock, pod)
	cfg.MaxHolders = maxHolders
	h, err := newLock(t, cp.Config, cfg).TryAcquire(context.Background())
	if err != nil {
		t.Fatalf("the klock of pod %s: %v", pod, err)
	}
	if h.Reentrant() {
		t.Errorf("the klock of pod %s joined its reservation instead of taking it over", pod)
	}
	return h
}

// A gated pod stays gated while a klock process holds its lock, and is let
// through the moment that klock's command exits, with the lock reserved
// for it: nobody else gets in before the pod's klock takes the lock over.
func TestGatedPodWaitsForItsLock(t *testing.T) {
	startWebhook(t)
	ns := namespace(t)
	grantLeases(t, ns, "default")
	log := filepath.Join(t.TempDir(), "log")
	cli := startKlock(t, cp.Kubeconfig, append([]string{"-n", ns, "-l", "nightly", "-i", "cli"}, fast...), probe(log, "cli", "-sleep", "6s")...)
	waitStarted(t, log, "cli")
	p := createPod(t, ns, gatedPod("run-1", "nightly"))
	if !wrap.Gated(p) || p.Labels[wrap.LabelGated] != "true" {
		t.Fatalf("the webhook did not gate the pod: gates %v, labels %v", p.Spec.SchedulingGates, p.Labels)
	}
	eventually(t, 10*time.Second, "the pod to queue for the lock", func() bool { return slices.Equal(queueOf(t, ns, "nightly"), []string{"run-1"}) })
	eventually(t, 10*time.Second, "an event saying what the pod waits for", func() bool {
		return hasEvent(t, ns, "run-1", gate.ReasonWaiting, "Waiting for lock nightly (held by cli, position 1 of 1)")
	})
	exited := make(chan int, 1)
	go func() { exited <- cli.wait(t, 30*time.Second) }()
	for running := true; running; {
		select {
		case code := <-exited:
			if code != 0 {
				t.Fatalf("the klock holding the lock exited %d: %s", code, cli.stderr.String())
			}
			running = false
		case <-time.After(200 * time.Millisecond):
			if _, ended := find(readLog(t, log), "end", "cli"); !ended && !isGated(t, ns, "run-1") {
				t.Fatal("the pod was let through while the klock's command ran")
			}
		}
	}
	eventually(t, 10*time.Second, "the pod to be let through", func() bool { return !isGated(t, ns, "run-1") })
	l := getLease(t, ns, "nightly")
	if holder(l) != "run-1" || l.Annotations[klock.AnnotationReservation] != string(p.UID) {
		t.Fatalf("the lock is not reserved for the pod: holder %q, annotations %v", holder(l), l.Annotations)
	}
	if q := queueOf(t, ns, "nightly"); len(q) != 0 {
		t.Errorf("the queue after the reservation: %v", q)
	}
	if !hasEvent(t, ns, "run-1", gate.ReasonReserved, "Lock nightly reserved for the pod") {
		t.Errorf("no reservation event: %v", podEvents(t, ns, "run-1"))
	}
	// The reservation outlives lease durations until the pod's klock comes.
	time.Sleep(3 * time.Second)
	if _, err := newLock(t, cp.Config, fastConfig(ns, "nightly", "late")).TryAcquire(context.Background()); err == nil {
		t.Fatal("another contender got the lock reserved for the pod")
	}

	h := startsAs(t, ns, "nightly", "run-1", 1)
	eventually(t, 10*time.Second, "the reservation to end", func() bool {
		time.Sleep(700 * time.Millisecond) // a renewal of the pod's
		l := getLease(t, ns, "nightly")
		return holder(l) == "run-1" && l.Annotations[klock.AnnotationReservation] == "" && h.Err() == nil
	})
	if err := h.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if l := getLease(t, ns, "nightly"); holder(l) != "" {
		t.Fatalf("the pod's klock released, and the Lease is held by %q", holder(l))
	}
}

// Gated pods and CLI waiters share one queue: each gets the lock in the
// order it came.
func TestGatedPodsAndWaitersFirstComeFirstServed(t *testing.T) {
	startWebhook(t)
	ns := namespace(t)
	grantLeases(t, ns, "default")
	hold, err := newLock(t, cp.Config, fastConfig(ns, "turns", "first")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	createPod(t, ns, gatedPod("p1", "turns"))
	eventually(t, 10*time.Second, "p1 to queue", func() bool { return slices.Equal(queueOf(t, ns, "turns"), []string{"p1"}) })
	got := make(chan *klock.Hold, 1)
	go func() {
		h, err := newLock(t, cp.Config, fastConfig(ns, "turns", "cli")).Acquire(context.Background())
		if err != nil {
			t.Error(err)
		}
		got <- h
	}()
	eventually(t, 10*time.Second, "the CLI waiter to queue", func() bool { return slices.Equal(queueOf(t, ns, "turns"), []string{"p1", "cli"}) })
	createPod(t, ns, gatedPod("p2", "turns"))
	eventually(t, 10*time.Second, "p2 to queue", func() bool { return slices.Equal(queueOf(t, ns, "turns"), []string{"p1", "cli", "p2"}) })
	createPod(t, ns, gatedPod("p3", "turns"))
	eventually(t, 10*time.Second, "p3 to queue", func() bool {
		return slices.Equal(queueOf(t, ns, "turns"), []string{"p1", "cli", "p2", "p3"})
	})
	if err := hold.Release(context.Background()); err != nil {
		t.Fatal(err)
	}

	pods := []string{"p1", "p2", "p3"}
	for range 4 {
		var turn string
		eventually(t, 20*time.Second, "the next turn", func() bool {
			select {
			case h := <-got:
				turn, hold = "cli", h
				return true
			default:
			}
			for _, p := range pods {
				if !isGated(t, ns, p) && !slices.Contains(order, p) {
					turn = p
					return true
				}
			}
			return false
		})
		order = append(order, turn)
		if turn != "cli" {
			hold = startsAs(t, ns, "turns", turn, 1)
		}
		time.Sleep(500 * time.Millisecond)
		if still := gatedOnly(t, ns, pods...); len(still) != len(pods)-len(slices.DeleteFunc(slices.Clone(order), func(s string) bool { return s == "cli" })) {
			t.Fatalf("after %v, the pods still gated are %v", order, still)
		}
		if err := hold.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"p1", "cli", "p2", "p3"}; !slices.Equal(order, want) {
		t.Fatalf("turns %v, want %v", order, want)
	}
}

// A counting lock lets as many gated pods through as it has holders.
func TestGatedPodsOfACountingLock(t *testing.T) {
	startWebhook(t)
	ns := namespace(t)
	grantLeases(t, ns, "default")
	names := []string{"r1", "r2", "r3"}
	for _, n := range names {
		createPod(t, ns, gatedPod(n, "replicas", wrap.AnnotationMaxHolders, "2"))
		eventually(t, 10*time.Second, n+" to be reserved for or queued", func() bool {
			return !isGated(t, ns, n) || slices.Contains(queueOf(t, ns, "replicas"), n)
		})
	}
	time.Sleep(3 * time.Second)
	if still := gatedOnly(t, ns, names...); !slices.Equal(still, []string{"r3"}) {
		t.Fatalf("gated: %v, want [r3]", still)
	}
	h1 := startsAs(t, ns, "replicas", "r1", 2)
	h2 := startsAs(t, ns, "replicas", "r2", 2)
	defer h2.Release(context.Background())
	if err := h1.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "r3 to be let through", func() bool { return !isGated(t, ns, "r3") })
	h3 := startsAs(t, ns, "replicas", "r3", 2)
	_ = h3.Release(context.Background())
}

// A reservation whose pod does not start within its start timeout is
// released, with an event; one whose pod is deleted is released at once.
func TestReservationsOfPodsThatDoNotStart(t *testing.T) {
	startWebhook(t)
	ns := namespace(t)
	grantLeases(t, ns, "default")
	createPod(t, ns, gatedPod("slow", "expiring", wrap.AnnotationStartTimeout, "2s"))
	eventually(t, 10*time.Second, "the pod to be let through", func() bool { return !isGated(t, ns, "slow") })
	eventually(t, 15*time.Second, "the reservation to be released", func() bool { return holder(getLease(t, ns, "expiring")) == "" })
	eventually(t, 10*time.Second, "an event saying so", func() bool {
		return hasEvent(t, ns, "slow", gate.ReasonReservationExpired, "did not start within 2s")
	})
	// Its klock, starting late, takes the lock like any other.
	h := startsAs(t, ns, "expiring", "slow", 1)
	_ = h.Release(context.Background())

	// The start timeout counts from the reservation, not from the pod's
	// creation: a pod that waited longer than it still gets its turn.
	hold, err := newLock(t, cp.Config, fastConfig(ns, "long", "first")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	createPod(t, ns, gatedPod("patient", "long", wrap.AnnotationStartTimeout, "3s"))
	eventually(t, 10*time.Second, "the pod to queue", func() bool { return slices.Equal(queueOf(t, ns, "long"), []string{"patient"}) })
	time.Sleep(4 * time.Second)
	if err := hold.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the pod to be let through", func() bool { return !isGated(t, ns, "patient") })
	time.Sleep(time.Second)
	if l := getLease(t, ns, "long"); holder(l) != "patient" {
		t.Fatalf("a second after the pod was let through, the lock is held by %q: its reservation did not last its start timeout", holder(l))
	}
	h = startsAs(t, ns, "long", "patient", 1)
	_ = h.Release(context.Background())

	createPod(t, ns, gatedPod("deleted", "deleting", wrap.AnnotationStartTimeout, "1h"))
	eventually(t, 10*time.Second, "the pod to be let through", func() bool { return !isGated(t, ns, "deleted") })
	if holder(getLease(t, ns, "deleting")) != "deleted" {
		t.Fatal("the lock is not reserved for the pod")
	}
	if err := cp.Client.CoreV1().Pods(ns).Delete(context.Background(), "deleted", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the reservation of the deleted pod to be released", func() bool { return holder(getLease(t, ns, "deleting")) == "" })
}

// countingWrites returns a copy of config that counts the pod patches and
// the Lease writes (but for leader election's) it sends.
func countingWrites(config *rest.Config, n *atomic.Int32) *rest.Config {
	c := rest.CopyConfig(config)
	c.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTrip(func(r *http.Request) (*http.Response, error) {
			path := r.URL.Path
			if r.Method == http.MethodPatch && strings.Contains(path, "/pods/") ||
				r.Method != http.MethodGet && strings.Contains(path, "/leases") && !strings.HasSuffix(path, "/klock-webhook-certs") {
				n.Add(1)
			}
			return rt.RoundTrip(r)
		})
	})
	return c
}

// Two replicas: only the leader reserves and lets pods through; when it
// stops in the middle of a reservation, the next leader adopts the
// reservation before it expires, so that nobody gets in before the pod.
func TestGateControllerLeaderChange(t *testing.T) {
	ns := namespace(t)
	grantLeases(t, ns, "default")
	replica := func(n *atomic.Int32, serving bool) func() {
		o := server.NewOptions()
		o.KlockImage, o.LeaderElect, o.LeaderElectionNamespace = testKlockImage, true, ns
		o.MetricsAddr, o.ProbeAddr = "0", "0"
		_, o.Port, o.CertDir = cp.WebhookServing()
		if !serving {
			o.Port = framework.Port(t) // the configuration calls the other
		}
		return cp.StartWebhook(t, o, countingWrites(cp.Config, n))
	}
	var first, second atomic.Int32
	stopFirst := replica(&first, true)
	eventually(t, 30*time.Second, "the first replica to lead", func() bool {
		l, err := cp.Client.CoordinationV1().Leases(ns).Get(context.Background(), "klock-webhook-certs", metav1.GetOptions{})
		return err == nil && holder(l) != ""
	})
	replica(&second, false)

	// The pod's klock keeps the lock 4s after the last write: the next
	// leader must adopt the reservation within that.
	p := createPod(t, ns, gatedPod("job-1", "handover", wrap.AnnotationLeaseDuration, "4s", wrap.AnnotationRenewDeadline, "3s"))
	eventually(t, 10*time.Second, "the pod to be let through", func() bool { return !isGated(t, ns, "job-1") })
	if l := getLease(t, ns, "handover"); l.Annotations[klock.AnnotationReservation] != string(p.UID) {
		t.Fatalf("not reserved: %v", l.Annotations)
	}
	// Behind it, a gated pod and then a CLI waiter: the leader change must
	// keep their order.
	createPod(t, ns, gatedPod("job-2", "handover", wrap.AnnotationLeaseDuration, "4s", wrap.AnnotationRenewDeadline, "3s"))
	eventually(t, 10*time.Second, "job-2 to queue", func() bool { return slices.Equal(queueOf(t, ns, "handover"), []string{"job-2"}) })
	later := make(chan *klock.Hold, 1)
	go func() {
		h, err := newLock(t, cp.Config, fastConfig(ns, "handover", "cli-later")).Acquire(context.Background())
		if err != nil {
			t.Error(err)
		}
		later <- h
	}()
	eventually(t, 10*time.Second, "the CLI waiter to queue", func() bool {
		return slices.Equal(queueOf(t, ns, "handover"), []string{"job-2", "cli-later"})
	})
	time.Sleep(time.Second)
	if n := second.Load(); n != 0 {
		t.Fatalf("the replica that does not lead sent %d pod patches or Lease writes", n)
	}
	if first.Load() == 0 {
		t.Fatal("the leader sent nothing")
	}

	stopFirst()
	// Many lease durations later, the reservation still stands, renewed by
	// the new leader.
	deadline := time.Now().Add(12 * time.Second)
	for time.Now().Before(deadline) {
		if h, err := newLock(t, cp.Config, fastConfig(ns, "handover", "other")).TryAcquire(context.Background()); err == nil {
			_ = h.Release(context.Background())
			t.Fatal("another contender got the lock reserved for the pod during the leader change")
		}
		time.Sleep(500 * time.Millisecond)
	}
	if second.Load() == 0 {
		t.Fatal("the new leader did not renew the reservation")
	}
	cfg := fastConfig(ns, "handover", "job-1")
	cfg.LeaseDuration, cfg.RenewDeadline = 4*time.Second, 3*time.Second
	h, err := newLock(t, cp.Config, cfg).TryAcquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.Reentrant() {
		t.Error("the pod's klock joined the reservation instead of taking it over")
	}
	if q := queueOf(t, ns, "handover"); !slices.Equal(q, []string{"job-2", "cli-later"}) {
		t.Fatalf("after the leader change the queue is %v, want [job-2 cli-later]", q)
	}
	if err := h.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "job-2, first in line, to be let through", func() bool { return !isGated(t, ns, "job-2") })
	select {
	case <-later:
		t.Fatal("the CLI waiter got the lock before job-2")
	default:
	}
	if l := getLease(t, ns, "handover"); holder(l) != "job-2" {
		t.Fatalf("the lock is held by %q, want a reservation for job-2", holder(l))
	}
	cfg.Identity = "job-2"
	h2, err := newLock(t, cp.Config, cfg).TryAcquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = h2.Release(context.Background())
	if h := <-later; h != nil {
		_ = h.Release(context.Background())
	}
}

// The controller may write any Lease; it reserves a lock only for a pod
// whose service account may hold it, so that a pod author cannot hold,
// through it, a Lease their pods may not.
func TestGatedPodWhoseAccountMayNotHoldTheLock(t *testing.T) {
	startWebhook(t)
	ns := namespace(t) // the default service account may not use Leases
	createPod(t, ns, gatedPod("sneaky", "theirs"))
	eventually(t, 15*time.Second, "an event saying what to grant", func() bool {
		return hasEvent(t, ns, "sneaky", gate.ReasonNotReserved, "Not reserving lock theirs yet, the pod stays gated: service account "+ns+"/default may not")
	})
	time.Sleep(2 * time.Second)
	if !isGated(t, ns, "sneaky") {
		t.Fatal("the pod was let through")
	}
	if _, err := cp.Client.CoordinationV1().Leases(ns).Get(context.Background(), "theirs", metav1.GetOptions{}); err == nil {
		t.Fatal("the controller wrote the Lease for a pod that may not hold it")
	}
}

// A lock held under the pod's own name by another process (a pod of the
// same name before it) keeps the pod gated, past its wait too: let
// through, its klock would share that hold.
func TestGatedPodNamedLikeAHolder(t *testing.T) {
	startWebhook(t)
	ns := namespace(t)
	grantLeases(t, ns, "default")
	twin, err := newLock(t, cp.Config, fastConfig(ns, "same", "twin")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	createPod(t, ns, gatedPod("twin", "same", wrap.AnnotationWait, "2s"))
	eventually(t, 10*time.Second, "an event saying why the pod waits", func() bool {
		return hasEvent(t, ns, "twin", gate.ReasonWaiting, "held under the pod's own name by another process")
	})
	time.Sleep(3 * time.Second) // past its wait
	if !isGated(t, ns, "twin") {
		t.Fatalf("the pod was let through into another process's hold: %v", podEvents(t, ns, "twin"))
	}
	if err := twin.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the pod to be let through, reserved", func() bool {
		return !isGated(t, ns, "twin") && getLease(t, ns, "same").Annotations[klock.AnnotationReservation] != ""
	})
}
