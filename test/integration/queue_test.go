package integration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/klock-io/klock/klock"
)

// queueOf reads the waiters of lock name, in order.
func queueOf(t *testing.T, ns, name string) []string {
	t.Helper()
	l, err := cp.Client.CoordinationV1().Leases(ns).Get(context.Background(), klock.QueueName(name), metav1.GetOptions{})
	if err != nil {
		return nil
	}
	entries, err := klock.ParseQueue(l)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.ID)
	}
	return ids
}

// unthrottled is the API server's config without client-side rate limits,
// as the klock CLI runs: ten waiters of one process would otherwise wait
// for each other's request budget.
func unthrottled() *rest.Config {
	c := rest.CopyConfig(cp.Config)
	c.QPS, c.Burst = 1000, 2000
	return c
}

// A counting lock never has more holders than its count, however many
// contend, and has that many at once when enough want it.
func TestCountingLockNeverExceedsItsCount(t *testing.T) {
	ns := namespace(t)
	const contenders, rounds, count = 20, 25, 3
	var inside insiders
	var runs atomic.Int32
	var tokens sync.Map
	var wg sync.WaitGroup
	for i := range contenders {
		wg.Go(func() {
			cfg := fastConfig(ns, "render", fmt.Sprintf("c%d", i))
			cfg.MaxHolders = count
			l := newLock(t, unthrottled(), cfg)
			for range rounds {
				h, err := l.Acquire(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				if _, dup := tokens.LoadOrStore(h.Token(), true); dup {
					t.Errorf("fencing token %d given twice", h.Token())
				}
				inside.enter()
				time.Sleep(20 * time.Millisecond)
				inside.leave()
				runs.Add(1)
				if err := h.Release(context.Background()); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if runs.Load() != contenders*rounds || inside.most.Load() > count {
		t.Fatalf("%d runs with at most %d inside at once, want %d with at most %d", runs.Load(), inside.most.Load(), contenders*rounds, count)
	}
	if inside.most.Load() < 2 {
		t.Errorf("at most %d inside at once: the lock counts to %d, but never let more than one in", inside.most.Load(), count)
	}
	for i := range count {
		name := klock.SlotNames("render", count)[i]
		l, err := cp.Client.CoordinationV1().Leases(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil || klock.MaxHoldersOf(l) != count || (i > 0 && l.Annotations[klock.AnnotationLock] != "render") {
			t.Errorf("Lease %s: %v, annotations %v", name, err, l.Annotations)
		}
	}
}

// Every contender of a lock must agree on its count: one that does not is
// told, naming both, while the lock is in use.
func TestCountingLockRefusesAnotherCount(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	cfg := fastConfig(ns, "pool", "a")
	cfg.MaxHolders = 3
	h, err := newLock(t, cp.Config, cfg).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 2, 4} {
		other := fastConfig(ns, "pool", "b")
		other.MaxHolders = n
		_, err := newLock(t, cp.Config, other).TryAcquire(ctx)
		want := fmt.Sprintf("lock %s/pool is held with max holders 3 (Lease pool), and this contender's max holders is %d", ns, n)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("max holders %d: %v, want %q", n, err, want)
		}
	}
	// A plain mutex of another name must not be taken for a slot.
	if _, err := cp.Client.CoordinationV1().Leases(ns).Get(ctx, "pool-1", metav1.GetOptions{}); err == nil {
		t.Fatal("a slot Lease exists before a second holder")
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// Idle, the lock takes the next contender's count.
	other := fastConfig(ns, "pool", "b")
	other.MaxHolders = 2
	h, err = newLock(t, cp.Config, other).TryAcquire(ctx)
	if err != nil {
		t.Fatalf("an idle lock refused another count: %v", err)
	}
	_ = h.Release(ctx)
}

// Waiters get the lock in the order they started waiting: ten waiters, each
// of which queues again after its turn, take 60 turns in the same order.
func TestQueueIsFirstComeFirstServed(t *testing.T) {
	ns := namespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const waiters, turns = 10, 60
	first, err := newLock(t, cp.Config, fastConfig(ns, "fifo", "holder")).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	for i := range waiters {
		id := fmt.Sprintf("w%02d", i)
		l := newLock(t, unthrottled(), fastConfig(ns, "fifo", id))
		wg.Go(func() {
			for {
				h, err := l.Acquire(ctx)
				if err != nil {
					if !errors.Is(err, context.Canceled) {
						t.Error(err)
					}
					return
				}
				mu.Lock()
				order = append(order, id)
				done := len(order) >= turns
				mu.Unlock()
				// Long enough for the waiter before to queue again.
				time.Sleep(30 * time.Millisecond)
				_ = h.Release(context.Background())
				if done {
					cancel()
					return
				}
			}
		})
		// The next waiter starts once this one has its place.
		eventually(t, 10*time.Second, id+" in the queue", func() bool { return slices.Contains(queueOf(t, ns, "fifo"), id) })
	}
	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(60 * time.Second):
		mu.Lock()
		t.Fatalf("stuck after %d turns %v; queue %v, holder %q", len(order), order, queueOf(t, ns, "fifo"), holder(getLease(t, ns, "fifo")))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) < turns {
		t.Fatalf("%d turns, want %d", len(order), turns)
	}
	// Each waiter queues again at the back when its turn ends, so the
	// turns go round in the order the waiters came.
	for i, id := range order[:turns] {
		if want := fmt.Sprintf("w%02d", i%waiters); id != want {
			t.Fatalf("turn %d went to %s, want %s; order %v", i, id, want, order)
		}
	}
}

// A waiter that gives up leaves the queue at once; one that is killed
// loses its place after the queue TTL, and the waiters behind it get the
// lock then, not before.
func TestQueueSkipsGoneWaiters(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	holder, err := newLock(t, cp.Config, fastConfig(ns, "gone", "holder")).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}

	quitter := newLock(t, cp.Config, fastConfig(ns, "gone", "quitter"))
	qctx, qcancel := context.WithCancel(ctx)
	qdone := make(chan error, 1)
	go func() { _, err := quitter.Acquire(qctx); qdone <- err }()
	eventually(t, 10*time.Second, "the quitter in the queue", func() bool { return slices.Contains(queueOf(t, ns, "gone"), "quitter") })
	qcancel()
	if err := <-qdone; !errors.Is(err, klock.ErrHeld) {
		t.Fatalf("the quitter gave up with %v, want ErrHeld", err)
	}
	if q := queueOf(t, ns, "gone"); slices.Contains(q, "quitter") {
		t.Fatalf("the quitter is still in the queue after giving up: %v", q)
	}

	// A klock process, SIGKILLed while it waits, cannot leave its place.
	dir := t.TempDir()
	args := append([]string{"-n", ns, "-l", "gone", "-i", "killed", "--queue-ttl", "3s"}, fast...)
	killed := startKlock(t, cp.Kubeconfig, args, probe(dir+"/log", "killed")...)
	eventually(t, 10*time.Second, "the killed waiter in the queue", func() bool { return slices.Contains(queueOf(t, ns, "gone"), "killed") })
	next := newLock(t, cp.Config, fastConfig(ns, "gone", "next"))
	got := make(chan time.Time, 1)
	go func() {
		h, err := next.Acquire(ctx)
		if err != nil {
			t.Error(err)
			close(got)
			return
		}
		got <- time.Now()
		_ = h.Release(ctx)
	}()
	eventually(t, 10*time.Second, "the next waiter in the queue", func() bool { return slices.Contains(queueOf(t, ns, "gone"), "next") })
	killedAt := time.Now() // no later than the kill
	killed.signal(t, syscall.SIGKILL)
	_ = killed.wait(t, 10*time.Second)
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-got:
		// The killed waiter renewed its place at most a third of its TTL
		// before it died; its place lasts the whole TTL after that.
		if earliest := killedAt.Add(3*time.Second - time.Second); at.Before(earliest) {
			t.Errorf("the next waiter got the lock %s after the kill, before the killed waiter's place could have lapsed", at.Sub(killedAt))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the next waiter did not get the lock within 20s of the kill: the dead waiter's place was never dropped")
	}
	if q := queueOf(t, ns, "gone"); slices.Contains(q, "killed") {
		t.Errorf("the killed waiter's place is still in the queue: %v", q)
	}
}

// A contender that races (order any) still excludes the queue's waiters;
// it may only jump the line.
func TestQueueAndRacersExclude(t *testing.T) {
	ns := namespace(t)
	var inside insiders
	var runs atomic.Int32
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			cfg := fastConfig(ns, "mixed", fmt.Sprintf("c%d", i))
			if i%2 == 0 {
				cfg.Order = klock.OrderAny
			}
			runInside(t, newLock(t, cp.Config, cfg), 5, &inside, &runs)
		})
	}
	wg.Wait()
	if runs.Load() != 30 || inside.most.Load() != 1 {
		t.Errorf("%d runs with at most %d inside at once, want 30 with 1", runs.Load(), inside.most.Load())
	}
}

// gatedLeases holds writes to one Lease until its gate opens.
type gatedLeases struct {
	klock.LeaseClient
	name    string
	reached chan struct{}
	gate    chan struct{}
	once    sync.Once
}

// wait holds the first write to the Lease until the gate opens.
func (g *gatedLeases) wait(name string) {
	if name == g.name {
		g.once.Do(func() {
			close(g.reached)
			<-g.gate
		})
	}
}

func (g *gatedLeases) Create(ctx context.Context, l *coordinationv1.Lease, o metav1.CreateOptions) (*coordinationv1.Lease, error) {
	g.wait(l.Name)
	return g.LeaseClient.Create(ctx, l, o)
}

func (g *gatedLeases) Update(ctx context.Context, l *coordinationv1.Lease, o metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	g.wait(l.Name)
	return g.LeaseClient.Update(ctx, l, o)
}

// Contenders that disagree on the count and race: the one with the larger
// count takes its slot while the others take theirs under the smaller
// count. It must see them once its write is in, and give its slot back
// before its holder runs, so that the smaller count's holders are never
// more than it allows.
func TestCountingLockRaceOfCounts(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	config := func(id string, n int) klock.Config {
		cfg := fastConfig(ns, "p", id)
		cfg.MaxHolders = n
		return cfg
	}
	a1, err := newLock(t, cp.Config, config("a1", 3)).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := newLock(t, cp.Config, config("a2", 3)).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gated := &gatedLeases{LeaseClient: cp.Client.CoordinationV1().Leases(ns), name: "p-2", reached: make(chan struct{}), gate: make(chan struct{})}
	a3, err := klock.New(gated, config("a3", 3))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		h, err := a3.Acquire(ctx)
		if err == nil {
			_ = h.Release(ctx)
		}
		got <- err
	}()
	<-gated.reached // a3 is taking p-2
	_ = a1.Release(ctx)
	_ = a2.Release(ctx)
	b1, err := newLock(t, cp.Config, config("b1", 2)).TryAcquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := newLock(t, cp.Config, config("b2", 2)).TryAcquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	close(gated.gate)
	err = <-got
	if err == nil || !strings.Contains(err.Error(), "is held with max holders 2") {
		t.Fatalf("a3 took a third slot beside two holders of a 2-holder lock: %v", err)
	}
	if h := holder(getLease(t, ns, "p-2")); h != "" {
		t.Errorf("a3 kept Lease p-2 (holder %q)", h)
	}
	_ = b1.Release(ctx)
	_ = b2.Release(ctx)
}
