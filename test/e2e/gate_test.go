//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/klock-io/klock/klock"
	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook/gate"
	"github.com/klock-io/klock/webhook/wrap"
)

// The gated scenarios: wrapped pods annotated klock.io/gate: "true" (the
// chart's default gating, opt-in) wait for their lock behind the
// scheduling gate klock.io/lock, on no node, until the webhook's gate
// controller reserves the lock for them and removes the gate.

// atScheduler reports whether the pod waits behind klock's scheduling
// gate: the gate is there, the pod is on no node, and the scheduler says
// why in its PodScheduled condition.
func atScheduler(p *corev1.Pod) bool {
	if !wrap.Gated(p) || p.Spec.NodeName != "" {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			return c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonSchedulingGated
		}
	}
	return false
}

// ran is a command's run, from its START and END lines.
type ran struct {
	pod        string
	start, end time.Time
}

// runOf reads the run of the pod's command from its log, which must hold
// both lines: the pod has finished.
func runOf(ctx context.Context, t *testing.T, ns, pod string) ran {
	t.Helper()
	lines := podLogs(ctx, t, ns, pod)
	return ran{pod: pod, start: mustFind(t, pod, lines, "START"), end: mustFind(t, pod, lines, "END")}
}

// gateEvent waits for the gate controller's event of reason about pod, and
// returns it. The controller records events.k8s.io/v1 events, whose
// eventTime is its clock's, to the microsecond; the node's is the same.
func gateEvent(ctx context.Context, t *testing.T, ns, pod, reason string) eventsv1.Event {
	t.Helper()
	var seen []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		list, err := cl.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seen = nil
		for _, e := range list.Items {
			if e.Regarding.Name != pod {
				continue
			}
			if e.Reason == reason {
				return e
			}
			seen = append(seen, e.Reason+": "+e.Note)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("pod %s has no %s event; its events: %q", pod, reason, seen)
		}
	}
}

// gatedHandoffs are the gated scenarios' handoffs, from the holder's
// command ending (klock releases the lock as it exits) to the lock being
// reserved for the next gated pod, and to that pod's command starting.
// The scenarios run in parallel, so the samples are collected here and
// reported once all have run.
var gatedHandoffs handoffs

type handoffs struct {
	mu                sync.Mutex
	reserved, started []time.Duration
}

func (h *handoffs) add(reserved, started time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reserved = append(h.reserved, reserved)
	h.started = append(h.started, started)
}

// report logs the medians, for the README beside the un-gated handoff.
// They are not asserted: most of a gated handoff is the node starting the
// pod (binding, sandbox, init container), which depends on the machine's
// load.
func (h *handoffs) report(t *testing.T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	line := func(what string, samples []time.Duration, note string) {
		s := slices.Sorted(slices.Values(samples))
		ms := func(d time.Duration) int64 { return d.Milliseconds() }
		t.Logf("gated handoff: released → %s p50 %d ms over %d (min %d ms, max %d ms; %s)", what, ms(s[len(s)/2]), len(s), ms(s[0]), ms(s[len(s)-1]), note)
	}
	if len(h.started) > 0 {
		line("command started", h.started, "from the holder's last line to the next pod's first")
		line("lock reserved", h.reserved, "to the LockReserved event, recorded as the gate is removed; the rest is the node starting the pod")
	}
}

// Scenario 8: scenario 1 with klock.io/gate: "true". The second run's pod
// waits for the lock at the scheduler, gated, on no node, rather than in a
// running container; when the first run's command ends, the lock is
// reserved for it and it is let through, and its command starts after the
// first's ended.
//
// The same schedule as scenario 1 (every minute, 70 s runs, overlapping
// runs allowed), for the same reason: the real CronJob controller makes
// the overlap. It runs beside the other scenarios, which take less time.
func testCronJobGated(t *testing.T) {
	t.Parallel()
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "cronjob-gated")
	const lease = "gated"
	jobs := startCronJob(ctx, t, ns, cronJob(lease, map[string]string{wrap.AnnotationLease: lease, wrap.AnnotationGate: "true"}))
	first, second := jobPod(ctx, t, ns, jobs[0]), jobPod(ctx, t, ns, jobs[1])

	// The second run's pod waits at the scheduler, as seen between asked
	// and answered; that the first was running its command then is known
	// from its log once it has ended.
	var asked, answered time.Time
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		asked = time.Now()
		p, err := cl.Client.CoreV1().Pods(ns).Get(ctx, second, metav1.GetOptions{})
		answered = time.Now()
		if err != nil {
			t.Fatal(err)
		}
		if !wrap.Gated(p) {
			t.Fatalf("the second run's pod %s was let through before it was seen waiting at the scheduler (did the first run end before it came?): gates %v, node %q, %s",
				second, p.Spec.SchedulingGates, p.Spec.NodeName, describe(p))
		}
		if atScheduler(p) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second run's pod %s is gated but not waiting at the scheduler: node %q, conditions %+v", second, p.Spec.NodeName, p.Status.Conditions)
		}
	}

	// Once let through, the second pod's klock takes the reservation over
	// as its own hold before its command starts.
	framework.Eventually(t, 2*time.Minute, "the second run's pod "+second+" to run its command", func() bool {
		p, err := cl.Client.CoreV1().Pods(ns).Get(ctx, second, metav1.GetOptions{})
		if err != nil || !running(p) && p.Status.Phase != corev1.PodSucceeded {
			return false
		}
		_, ok := find(podLogs(ctx, t, ns, second), "START")
		return ok
	})
	l, err := cl.Client.CoordinationV1().Leases(ns).Get(ctx, lease, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h, r := ptr.Deref(l.Spec.HolderIdentity, ""), l.Annotations[klock.AnnotationReservation]; h != second || r != "" {
		t.Errorf("Lease %s while %s runs its command: holder %q, reservation %q; want held by %s, taken over (no reservation)", lease, second, h, r, second)
	}

	var pods []*corev1.Pod
	for _, name := range []string{first, second} {
		p := waitPod(ctx, t, ns, name, 3*time.Minute, "finished", phaseIs(corev1.PodSucceeded, corev1.PodFailed))
		wrapped(t, p, lease)
		if p.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("pod %s %s: %s", p.Name, p.Status.Phase, describe(p))
		}
		pods = append(pods, p)
	}
	a, b := runOf(ctx, t, ns, first), runOf(ctx, t, ns, second)
	t.Logf("%s ran its command %s to %s; %s waited at the scheduler (seen at %s) and ran its command %s to %s",
		a.pod, a.start.Format(time.StampMilli), a.end.Format(time.StampMilli),
		b.pod, asked.Format(time.StampMilli), b.start.Format(time.StampMilli), b.end.Format(time.StampMilli))
	if asked.Before(a.start) || answered.After(a.end) {
		t.Fatalf("%s was seen waiting at the scheduler between %s and %s, not while %s ran its command (%s to %s): the runs did not overlap",
			b.pod, asked.Format(time.StampMilli), answered.Format(time.StampMilli), a.pod, a.start.Format(time.StampMilli), a.end.Format(time.StampMilli))
	}
	if b.start.Before(a.end) {
		t.Fatalf("two commands ran at once: %s started at %s, before %s ended at %s", b.pod, b.start, a.pod, a.end)
	}
	// Unlike scenario 1's, the second pod's container started only once
	// the first run was over. Its start time is in whole seconds.
	if started := pods[1].Status.ContainerStatuses[0].State.Terminated.StartedAt.Time; started.Before(a.end.Truncate(time.Second)) {
		t.Errorf("%s's container started at %s, while %s's command still ran (until %s): it did not wait at the scheduler", b.pod, started, a.pod, a.end)
	}
	waited := gateEvent(ctx, t, ns, second, gate.ReasonWaiting)
	reserved := gateEvent(ctx, t, ns, second, gate.ReasonReserved)
	t.Logf("events on %s: %s: %s; %s at %s: %s", b.pod, waited.Reason, waited.Note, reserved.Reason, reserved.EventTime.Format(time.StampMilli), reserved.Note)
	if reserved.EventTime.Time.Before(a.end) {
		t.Errorf("the lock was reserved for %s at %s, before %s's command ended at %s", b.pod, reserved.EventTime.Format(time.StampMilli), a.pod, a.end.Format(time.StampMilli))
	}
	gap := b.start.Sub(a.end)
	gatedHandoffs.add(reserved.EventTime.Sub(a.end), gap)
	t.Logf("handover: %s from END to START", gap.Round(time.Millisecond))
	// The second pod's klock released the lock when its command ended.
	if h, _, err := holder(ctx, ns, lease); err != nil || h != "" {
		t.Errorf("Lease %s after both runs: holder %q (%v), want released", lease, h, err)
	}
}

// Scenario 9: a Deployment of 3 replicas under a counting lock of 2, gated:
// 2 replicas run their command and the third waits at the scheduler, and
// stays there. Deleting a replica that runs lets the waiting one through,
// before the replacement the ReplicaSet makes, which queued after it and
// waits at the scheduler in turn.
func testGatedCountingLock(t *testing.T) {
	t.Parallel()
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "gated-replicas")
	const lease = "render"
	dep := deployment(lease, 3, map[string]string{
		wrap.AnnotationLease:      lease,
		wrap.AnnotationMaxHolders: "2",
		wrap.AnnotationGate:       "true",
	})
	if _, err := cl.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// observe returns the replicas, not being deleted, that run their
	// command and those that wait at the scheduler, each sorted.
	observe := func() (runners, gated []string) {
		list, err := cl.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + lease})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range list.Items {
			switch {
			case p.DeletionTimestamp != nil:
			case atScheduler(&p):
				gated = append(gated, p.Name)
			case running(&p):
				if _, ok := find(podLogs(ctx, t, ns, p.Name), "START"); ok {
					runners = append(runners, p.Name)
				}
			}
		}
		sort.Strings(runners)
		sort.Strings(gated)
		return runners, gated
	}
	// steady fails t unless the replicas stay as they are for d.
	steady := func(d time.Duration, runners, gated []string) {
		t.Helper()
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
			if r, g := observe(); !slices.Equal(r, runners) || !slices.Equal(g, gated) {
				t.Fatalf("replicas running their command %v and waiting at the scheduler %v, want still %v and %v", r, g, runners, gated)
			}
		}
	}

	var runners, gated []string
	framework.Eventually(t, 2*time.Minute, "2 replicas to run their command and the third to wait at the scheduler", func() bool {
		runners, gated = observe()
		return len(runners) == 2 && len(gated) == 1
	})
	steady(5*time.Second, runners, gated)
	t.Logf("%v run their command, %s waits at the scheduler", runners, gated[0])
	for _, name := range append(slices.Clone(runners), gated...) {
		p, err := cl.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		wrapped(t, p, lease)
	}
	// The lock's two slots are held by the replicas that run, whose klock
	// took their reservations over.
	var holders []string
	for _, slot := range klock.SlotNames(lease, 2) {
		l, err := cl.Client.CoordinationV1().Leases(ns).Get(ctx, slot, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := l.Annotations[klock.AnnotationReservation]; r != "" {
			t.Errorf("Lease %s is still a reservation (%s): the pod's klock did not take it over", slot, r)
		}
		holders = append(holders, ptr.Deref(l.Spec.HolderIdentity, ""))
	}
	sort.Strings(holders)
	if !slices.Equal(holders, runners) {
		t.Fatalf("the lock's slots are held by %q, but %q run their command", holders, runners)
	}
	waited := gateEvent(ctx, t, ns, gated[0], gate.ReasonWaiting)
	t.Logf("event on %s: %s: %s", gated[0], waited.Reason, waited.Note)

	victim, survivor, waiter := runners[0], runners[1], gated[0]
	victimLog := follow(ctx, t, ns, victim)
	if err := cl.Client.CoreV1().Pods(ns).Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	end := mustFind(t, victim, victimLog(), "CLEANED")
	framework.Eventually(t, 2*time.Minute, "the waiting replica "+waiter+" to run its command and the replacement to wait at the scheduler", func() bool {
		runners, gated = observe()
		for _, r := range runners {
			if r != survivor && r != waiter {
				t.Fatalf("%s runs its command before %s, which waited longer: replicas running %v, waiting %v", r, waiter, runners, gated)
			}
		}
		return slices.Equal(runners, slices.Sorted(slices.Values([]string{survivor, waiter}))) && len(gated) == 1
	})
	start := mustFind(t, waiter, podLogs(ctx, t, ns, waiter), "START")
	if start.Before(end) {
		t.Fatalf("%s started its command at %s, while %s's still ran (until %s)", waiter, start, victim, end)
	}
	reserved := gateEvent(ctx, t, ns, waiter, gate.ReasonReserved)
	if reserved.EventTime.Time.Before(end) {
		t.Errorf("the lock was reserved for %s at %s, before %s's command ended at %s", waiter, reserved.EventTime.Format(time.StampMilli), victim, end.Format(time.StampMilli))
	}
	gatedHandoffs.add(reserved.EventTime.Sub(end), start.Sub(end))
	t.Logf("%s deleted: %s started its command %s after its command ended; the replacement %s waits at the scheduler",
		victim, waiter, start.Sub(end).Round(time.Millisecond), gated[0])
	steady(3*time.Second, runners, gated)
}

// Scenario 10: short gated pods of one lock, created together, take turns
// on the node: each waits at the scheduler until the lock is reserved for
// it, which is after the command before it has ended, and no two commands
// overlap. Its handoffs are most of the gated handoff figure's samples.
func testGatedTurns(t *testing.T) {
	t.Parallel()
	timed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ns := newNamespace(ctx, t, "gated-turns")
	const (
		lease = "turns"
		n     = 5
	)
	var names []string
	for i := range n {
		p, err := cl.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("turn-%d", i), Annotations: map[string]string{wrap.AnnotationLease: lease, wrap.AnnotationGate: "true"}},
			Spec:       podSpec(busybox("app", "echo START $HOSTNAME; sleep 1; echo END $HOSTNAME")),
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		wrapped(t, p, lease)
		if !wrap.Gated(p) || p.Labels[wrap.LabelGated] != "true" {
			t.Fatalf("the webhook did not gate pod %s: gates %v, labels %v", p.Name, p.Spec.SchedulingGates, p.Labels)
		}
		names = append(names, p.Name)
	}
	var runs []ran
	for _, name := range names {
		p := waitPod(ctx, t, ns, name, 3*time.Minute, "finished", phaseIs(corev1.PodSucceeded, corev1.PodFailed))
		if p.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("pod %s %s: %s", p.Name, p.Status.Phase, describe(p))
		}
		runs = append(runs, runOf(ctx, t, ns, name))
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].start.Before(runs[j].start) })
	var order, gaps []string
	for i, r := range runs {
		order = append(order, r.pod)
		reserved := gateEvent(ctx, t, ns, r.pod, gate.ReasonReserved)
		if i == 0 {
			continue
		}
		prev := runs[i-1]
		if r.start.Before(prev.end) {
			t.Fatalf("two commands ran at once: %s started at %s, before %s ended at %s", r.pod, r.start, prev.pod, prev.end)
		}
		// Created while the first held the lock: each one after it waited.
		gateEvent(ctx, t, ns, r.pod, gate.ReasonWaiting)
		if reserved.EventTime.Time.Before(prev.end) {
			t.Errorf("the lock was reserved for %s at %s, before %s's command ended at %s", r.pod, reserved.EventTime.Format(time.StampMilli), prev.pod, prev.end.Format(time.StampMilli))
		}
		gap := r.start.Sub(prev.end)
		gatedHandoffs.add(reserved.EventTime.Sub(prev.end), gap)
		gaps = append(gaps, gap.Round(time.Millisecond).String())
	}
	t.Logf("commands ran in turn: %s; handovers from END to START: %s", strings.Join(order, ", "), strings.Join(gaps, ", "))
}
