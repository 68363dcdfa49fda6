package klock

import (
	"bytes"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// record is the part of a Lease that says who holds it and for how long.
// A waiter restarts its expiry clock whenever the record changes, and only
// then: a write that touches nothing else (labels, say) is no sign of life.
type record struct {
	holder      string
	duration    time.Duration
	acquireTime int64 // Unix microseconds, as the API stores them
	renewTime   int64
	transitions int32
}

// shortened reports whether r is prev with only a shorter duration.
func (r record) shortened(prev record) bool {
	d := prev.duration
	prev.duration = r.duration
	return r == prev && r.duration < d
}

func recordOf(l *coordinationv1.Lease) record {
	var r record
	s := l.Spec
	if s.HolderIdentity != nil {
		r.holder = *s.HolderIdentity
	}
	if s.LeaseDurationSeconds != nil {
		r.duration = time.Duration(*s.LeaseDurationSeconds) * time.Second
	}
	if s.AcquireTime != nil {
		r.acquireTime = s.AcquireTime.UnixMicro()
	}
	if s.RenewTime != nil {
		r.renewTime = s.RenewTime.UnixMicro()
	}
	if s.LeaseTransitions != nil {
		r.transitions = *s.LeaseTransitions
	}
	return r
}

// observation is what this process knows of the Lease: the object last read
// (nil when it does not exist) and the local time from which its record
// counts as unchanged. That time is when this process first saw the record,
// moved back by how long the record had already been standing by the API
// server's clock (see serverAge). Expiry is never judged from renewTime,
// which another machine's clock wrote, so the lock stays safe whatever the
// clock skew between contenders.
type observation struct {
	lease  *coordinationv1.Lease
	record record
	seen   time.Time
}

// observe folds a fresh read of the Lease into o. age is how long the Lease
// had stood unwritten by the API server's clock when it was read, 0 when
// unknown (a watch event, or a client that does not report the server's
// date).
func (o *observation) observe(l *coordinationv1.Lease, now time.Time, age time.Duration) {
	if l == nil {
		*o = observation{seen: now}
		return
	}
	r := recordOf(l)
	since := now.Add(-age)
	switch {
	case o.lease != nil && r.shortened(o.record):
		// Only the duration went down: no holder shortens its own lease
		// while it holds it (klock and client-go write their own duration
		// with every renewal), so this is an edit by somebody else, and
		// the holder still trusts the longer one until its next renewal.
		// Keep what was seen.
	case o.lease == nil || r != o.record:
		o.record, o.seen = r, since
	case since.Before(o.seen):
		// The same record, known now to be older than first thought.
		o.seen = since
	}
	o.lease = l
}

// state says what identity may do with the observed Lease at now.
type state int

const (
	stateMissing state = iota // no Lease: create it
	stateFree                 // released or expired: take it
	stateOurs                 // held by this identity, unexpired: take it again (re-entrant)
	stateHeld                 // held by another identity until expiry()
)

func (o *observation) state(identity string, now time.Time) state {
	switch {
	case o.lease == nil:
		return stateMissing
	case o.record.holder == "":
		return stateFree
	case !now.Before(o.expiry()):
		// Expired, even if under our own identity: whoever held it is
		// gone, so this is a new acquisition, not a re-entrant one.
		return stateFree
	case o.record.holder == identity:
		return stateOurs
	default:
		return stateHeld
	}
}

// expiry is when others may take the observed Lease if nothing changes.
func (o *observation) expiry() time.Time {
	return o.seen.Add(o.record.duration)
}

// serverClockMargin covers the whole-second precision of the two server
// timestamps serverAge subtracts (each may be up to a second below the
// truth), plus a second for API server replicas whose clocks differ a little.
const serverClockMargin = 2 * time.Second

// serverAge is how long the Lease's record had stood unwritten when the API
// server answered the read dated date, judged on the API server's clock
// alone: the server stamps every write in metadata.managedFields (the time
// of the entry that owns spec.renewTime is when the record was last
// written), and dates every response. It errs short by serverClockMargin,
// and is 0 when either stamp is missing.
//
// This lets a process that has just started recognise a Lease abandoned
// long ago without comparing another machine's clock with its own: a
// contender that waits less than a lease duration (klock -w 10s -E 0) would
// otherwise never see an abandoned Lease expire.
//
// The answer is trusted only if its Date agrees with this process's clock
// within serverClockMargin. That is no comparison of contenders' clocks:
// it keeps a Date that did not come from the API server's clock (a proxy in
// between that dates its own answers) from crediting a live holder's
// record with an age it does not have. A process whose clock is off gets
// no credit, and judges expiry from its own observations, as before.
func serverAge(l *coordinationv1.Lease, date, now time.Time) time.Duration {
	if l == nil || date.IsZero() {
		return 0
	}
	if d := now.Sub(date); d > serverClockMargin || d < -serverClockMargin {
		return 0
	}
	var written time.Time
	for _, mf := range l.ManagedFields {
		if mf.Time != nil && mf.Time.After(written) && ownsRenewTime(mf) {
			written = mf.Time.Time
		}
	}
	if written.IsZero() {
		return 0
	}
	return max(date.Sub(written)-serverClockMargin, 0)
}

// ownsRenewTime reports whether a managedFields entry owns spec.renewTime,
// which every write of a holder's record changes.
func ownsRenewTime(mf metav1.ManagedFieldsEntry) bool {
	return mf.FieldsV1 != nil && bytes.Contains(mf.FieldsV1.Raw, []byte(`"f:renewTime"`))
}
