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
				o.observe(l, tc.at[i], 0)
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
	l.obs.observe(prev, now.Add(-time.Minute), 0)
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
	l.obs.observe(ours, now, 0)
	again := l.acquisition(ours, stateOurs, now)
	if *again.Spec.LeaseTransitions != 4 || !again.Spec.AcquireTime.Equal(ours.Spec.AcquireTime) {
		t.Errorf("re-entrant: transitions %d, acquireTime %v; want both kept", *again.Spec.LeaseTransitions, again.Spec.AcquireTime)
	}
}

func TestServerAge(t *testing.T) {
	written := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	renewTimeOwner := &metav1.FieldsV1{Raw: []byte(`{"f:spec":{"f:holderIdentity":{},"f:renewTime":{}}}`)}
	labelsOwner := &metav1.FieldsV1{Raw: []byte(`{"f:metadata":{"f:labels":{"f:team":{}}}}`)}
	stamped := func(entries ...metav1.ManagedFieldsEntry) *coordinationv1.Lease {
		l := lease("b", 15, written)
		l.ManagedFields = entries
		return l
	}
	entry := func(at time.Time, fields *metav1.FieldsV1) metav1.ManagedFieldsEntry {
		return metav1.ManagedFieldsEntry{Manager: "m", Time: &metav1.Time{Time: at}, FieldsV1: fields}
	}
	for _, tc := range []struct {
		name      string
		lease     *coordinationv1.Lease
		date, now time.Time
		want      time.Duration
	}{
		{name: "no date: unknown", lease: stamped(entry(written, renewTimeOwner)), now: written.Add(time.Hour), want: 0},
		{name: "no write stamp: unknown", lease: stamped(), date: written.Add(time.Hour), now: written.Add(time.Hour), want: 0},
		{name: "an hour old, less the margin", lease: stamped(entry(written, renewTimeOwner)), date: written.Add(time.Hour), now: written.Add(time.Hour), want: time.Hour - serverClockMargin},
		{
			name:  "the newest write of renewTime counts",
			lease: stamped(entry(written.Add(-time.Hour), renewTimeOwner), entry(written, renewTimeOwner)),
			date:  written.Add(time.Minute), now: written.Add(time.Minute), want: time.Minute - serverClockMargin,
		},
		{
			// A later write of labels alone says nothing of the record; an
			// entry renamed or removed by an edit does not make it older.
			name:  "a write of other fields does not count",
			lease: stamped(entry(written.Add(-time.Hour), labelsOwner), entry(written, renewTimeOwner)),
			date:  written.Add(time.Minute), now: written.Add(time.Minute), want: time.Minute - serverClockMargin,
		},
		{name: "no entry owns renewTime: unknown", lease: stamped(entry(written.Add(-time.Hour), labelsOwner)), date: written, now: written, want: 0},
		{name: "within the margin: zero", lease: stamped(entry(written, renewTimeOwner)), date: written.Add(time.Second), now: written.Add(time.Second), want: 0},
		{name: "a date before the write: zero", lease: stamped(entry(written, renewTimeOwner)), date: written.Add(-time.Minute), now: written.Add(-time.Minute), want: 0},
		{
			// A proxy that dates its own answers, or a local clock that is
			// off: the Date cannot be taken for the API server's clock.
			name:  "a date far from the local clock: unknown",
			lease: stamped(entry(written, renewTimeOwner)), date: written.Add(time.Hour), now: written.Add(time.Hour - 20*time.Second), want: 0,
		},
		{name: "a date a second off the local clock", lease: stamped(entry(written, renewTimeOwner)), date: written.Add(time.Hour), now: written.Add(time.Hour + time.Second), want: time.Hour - serverClockMargin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := serverAge(tc.lease, tc.date, tc.now); got != tc.want {
				t.Errorf("serverAge = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestObservationKeepsAShortenedDuration(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var o observation
	o.observe(lease("b", 15, t0), t0, 0)
	// Somebody edits the held Lease down to 1s: the holder still trusts
	// its 15s until its next renewal writes them back.
	o.observe(lease("b", 1, t0), t0.Add(5*time.Second), 0)
	if got := o.state("me", t0.Add(7*time.Second)); got != stateHeld {
		t.Errorf("state 2s after the duration was edited down to 1s = %d, want held", got)
	}
	if got := o.state("me", t0.Add(15*time.Second)); got != stateFree {
		t.Errorf("state 15s after the last renewal = %d, want free", got)
	}
	// A longer duration is taken at once.
	o.observe(lease("b", 60, t0), t0.Add(16*time.Second), 0)
	if got := o.state("me", t0.Add(70*time.Second)); got != stateHeld {
		t.Errorf("state after the duration was raised to 60s = %d, want held", got)
	}
}

func TestObservationWithServerAge(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	held := lease("b", 15, t0)

	// First seen now, but 14s old by the API server's clock: it expires
	// in a second, not in 15.
	var o observation
	o.observe(held, t0, 14*time.Second)
	if got := o.state("me", t0.Add(500*time.Millisecond)); got != stateHeld {
		t.Errorf("state half a second later = %d, want held", got)
	}
	if got := o.state("me", t0.Add(time.Second)); got != stateFree {
		t.Errorf("state a second later = %d, want free (expired)", got)
	}

	// Seen again unchanged with a smaller age (a watch event, say): the
	// earlier start stands.
	o.observe(held, t0.Add(500*time.Millisecond), 0)
	if got := o.expiry(); !got.Equal(t0.Add(time.Second)) {
		t.Errorf("expiry after a later, undated sighting = %s, want %s", got, t0.Add(time.Second))
	}

	// A renewal restarts the count, whatever the age of the last one.
	renewed := lease("b", 15, t0.Add(time.Second))
	o.observe(renewed, t0.Add(2*time.Second), 0)
	if got := o.state("me", t0.Add(16*time.Second)); got != stateHeld {
		t.Errorf("state 14s after a renewal = %d, want held", got)
	}
}
