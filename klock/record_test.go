package klock

import (
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func lease(holder string, durationSeconds int32, renew time.Time) *coordinationv1.Lease {
	rt := metav1.NewMicroTime(renew)
	return &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{
		HolderIdentity: &holder, LeaseDurationSeconds: &durationSeconds, RenewTime: &rt,
	}}
}

func TestObservationState(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ancient := t0.Add(-24 * time.Hour)
	for _, tc := range []struct {
		name string
		// observations in order: lease (nil: missing) and the local time seen
		seen []*coordinationv1.Lease
		at   []time.Time
		now  time.Time
		want state
	}{
		{name: "missing", seen: []*coordinationv1.Lease{nil}, at: []time.Time{t0}, now: t0, want: stateMissing},
		{name: "released", seen: []*coordinationv1.Lease{lease("", 1, t0)}, at: []time.Time{t0}, now: t0, want: stateFree},
		{name: "held by another", seen: []*coordinationv1.Lease{lease("b", 10, t0)}, at: []time.Time{t0}, now: t0.Add(9 * time.Second), want: stateHeld},
		{name: "expired by local observation", seen: []*coordinationv1.Lease{lease("b", 10, t0)}, at: []time.Time{t0}, now: t0.Add(10 * time.Second), want: stateFree},
		{
			// The holder's clock may be a day behind: its renewTime says
			// nothing to us, only when we saw the record change does.
			name: "an old renewTime first seen now is still held",
			seen: []*coordinationv1.Lease{lease("b", 10, ancient)}, at: []time.Time{t0}, now: t0.Add(time.Second), want: stateHeld,
		},
		{
			name: "a renewal restarts the clock",
			seen: []*coordinationv1.Lease{lease("b", 10, t0), lease("b", 10, t0.Add(8*time.Second))},
			at:   []time.Time{t0, t0.Add(8 * time.Second)}, now: t0.Add(12 * time.Second), want: stateHeld,
		},
		{
			name: "the same record seen again does not restart the clock",
			seen: []*coordinationv1.Lease{lease("b", 10, t0), lease("b", 10, t0)},
			at:   []time.Time{t0, t0.Add(8 * time.Second)}, now: t0.Add(10 * time.Second), want: stateFree,
		},
		{name: "held by us", seen: []*coordinationv1.Lease{lease("me", 10, t0)}, at: []time.Time{t0}, now: t0, want: stateOurs},
		{name: "held by us but expired", seen: []*coordinationv1.Lease{lease("me", 10, t0)}, at: []time.Time{t0}, now: t0.Add(11 * time.Second), want: stateFree},
		{name: "no duration means expired", seen: []*coordinationv1.Lease{{Spec: coordinationv1.LeaseSpec{HolderIdentity: new("b")}}}, at: []time.Time{t0}, now: t0, want: stateFree},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var o observation
			for i, l := range tc.seen {
				o.observe(l, tc.at[i])
			}
			if got := o.state("me", tc.now); got != tc.want {
				t.Errorf("state = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestAcquisitionRecord(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := &Lock{cfg: Config{Name: "n", Namespace: "ns", Identity: "me", LeaseDuration: 15 * time.Second, Labels: map[string]string{"team": "a"}}}

	created := l.acquisition(nil, stateMissing, now)
	if got := created.Labels; got[ManagedByLabel] != ManagedByValue || got["team"] != "a" {
		t.Errorf("labels on creation = %v", got)
	}
	if *created.Spec.HolderIdentity != "me" || *created.Spec.LeaseDurationSeconds != 15 || *created.Spec.LeaseTransitions != 0 {
		t.Errorf("created spec = %+v", created.Spec)
	}

	prev := lease("other", 10, now.Add(-time.Minute))
	prev.Spec.LeaseTransitions = new(int32(4))
	prev.Spec.AcquireTime = new(metav1.NewMicroTime(now.Add(-time.Hour)))
	l.obs.observe(prev, now.Add(-time.Minute))
	taken := l.acquisition(prev, stateFree, now)
	if *taken.Spec.LeaseTransitions != 5 || !taken.Spec.AcquireTime.Equal(new(metav1.NewMicroTime(now))) {
		t.Errorf("taking over: transitions %d, acquireTime %v; want 5 and now", *taken.Spec.LeaseTransitions, taken.Spec.AcquireTime)
	}
	if *prev.Spec.HolderIdentity != "other" {
		t.Error("acquisition modified the lease it was given")
	}

	ours := lease("me", 15, now.Add(-time.Second))
	ours.Spec.LeaseTransitions = new(int32(4))
	ours.Spec.AcquireTime = new(metav1.NewMicroTime(now.Add(-time.Hour)))
	l.obs.observe(ours, now)
	again := l.acquisition(ours, stateOurs, now)
	if *again.Spec.LeaseTransitions != 4 || !again.Spec.AcquireTime.Equal(ours.Spec.AcquireTime) {
		t.Errorf("re-entrant: transitions %d, acquireTime %v; want both kept", *again.Spec.LeaseTransitions, again.Spec.AcquireTime)
	}
}
