package wrap_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/klock-io/klock/webhook/wrap"
)

// LeaseNames is what the Lease access controller grants and the admission
// review checks: every Lease the pod's klock touches.
func TestLeaseNames(t *testing.T) {
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		want        []string
		err         string
	}{
		{name: "a mutex queues its waiters by default", annotations: map[string]string{wrap.AnnotationLease: "nightly"},
			want: []string{"nightly", "nightly-queue"}},
		{name: "a mutex whose waiters race is its one Lease", annotations: map[string]string{wrap.AnnotationLease: "nightly", wrap.AnnotationOrder: "any"},
			want: []string{"nightly"}},
		{name: "a counting lock: a slot per holder, and the queue", annotations: map[string]string{wrap.AnnotationLease: "nightly", wrap.AnnotationMaxHolders: "3"},
			want: []string{"nightly", "nightly-1", "nightly-2", "nightly-queue"}},
		{name: "a counting lock whose waiters race", annotations: map[string]string{wrap.AnnotationLease: "nightly", wrap.AnnotationMaxHolders: "2", wrap.AnnotationOrder: "any"},
			want: []string{"nightly", "nightly-1"}},
		{name: "fifo said out loud", annotations: map[string]string{wrap.AnnotationLease: "nightly", wrap.AnnotationMaxHolders: "1", wrap.AnnotationOrder: "fifo"},
			want: []string{"nightly", "nightly-queue"}},
		{name: "a count klock refuses", annotations: map[string]string{wrap.AnnotationLease: "nightly", wrap.AnnotationMaxHolders: "0"},
			err: `metadata.annotations[klock.io/max-holders]: Invalid value: "0": "0" is not a number of holders: give a whole number from 1 to 100`},
		{name: "an order klock refuses", annotations: map[string]string{wrap.AnnotationLease: "nightly", wrap.AnnotationOrder: "random"},
			err: `metadata.annotations[klock.io/order]: Invalid value: "random": "random" is not an order: give fifo`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := wrap.LeaseNames(tc.annotations)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("names (-want,+got):\n%s", diff)
			}
		})
	}
}

// The typo warning knows the counting lock's annotations: set right, they
// draw no warning; mistyped, the warning names them.
func TestUnknownKeysKnowsCountingLocks(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want []string
	}{
		{key: wrap.AnnotationMaxHolders},
		{key: wrap.AnnotationOrder},
		{key: "klock.io/max-holder", want: []string{`annotation "klock.io/max-holder" is not one klock knows, and is ignored: did you mean klock.io/max-holders?`}},
		{key: "klock.io/oder", want: []string{`annotation "klock.io/oder" is not one klock knows, and is ignored: did you mean klock.io/order?`}},
	} {
		t.Run(tc.key, func(t *testing.T) {
			got := wrap.UnknownKeys(map[string]string{wrap.AnnotationLease: "x", tc.key: "2"})
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("warnings (-want,+got):\n%s", diff)
			}
		})
	}
}
