package klock

import (
	"strings"
	"testing"
	"time"
)

func TestConfigComplete(t *testing.T) {
	got, err := Config{Name: "x"}.complete()
	if err != nil {
		t.Fatal(err)
	}
	if got.Namespace != "default" || got.Identity == "" || got.LeaseDuration != DefaultLeaseDuration ||
		got.RenewDeadline != DefaultRenewDeadline || got.RetryPeriod != DefaultRetryPeriod || got.RenewInterval != DefaultRetryPeriod ||
		got.MaxHolders != 1 || got.Order != OrderFIFO || got.QueueTTL != DefaultQueueTTL {
		t.Errorf("defaults not filled in: %+v", got)
	}
	if a, b := DefaultIdentity(), DefaultIdentity(); a == b {
		t.Errorf("two default identities are equal: %q", a)
	}

	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "no name", cfg: Config{}, want: "lease name is empty"},
		{name: "bad name", cfg: Config{Name: "A_b"}, want: `invalid lease name "A_b"`},
		{name: "bad namespace", cfg: Config{Name: "x", Namespace: "a.b"}, want: `invalid namespace "a.b"`},
		{name: "a duration the Lease cannot store", cfg: Config{Name: "x", LeaseDuration: (1<<32 + 1) * time.Second, RenewDeadline: time.Hour}, want: "must be at most"},
		{name: "fractional duration", cfg: Config{Name: "x", LeaseDuration: 2500 * time.Millisecond}, want: "whole number of seconds"},
		{name: "renew deadline over the lease duration given", cfg: Config{Name: "x", LeaseDuration: 15 * time.Second, RenewDeadline: 15 * time.Second}, want: "below the lease duration 15s"},
		{name: "retry period over the renew deadline given", cfg: Config{Name: "x", RenewDeadline: 10 * time.Second, RetryPeriod: 10 * time.Second}, want: "below the renew deadline 10s"},
		{name: "retry period over the renew deadline derived from the lease duration", cfg: Config{Name: "x", LeaseDuration: 3 * time.Second, RetryPeriod: 2 * time.Second}, want: "below the renew deadline 2s"},
		{name: "renew interval too long", cfg: Config{Name: "x", RenewInterval: 10 * time.Second}, want: "invalid renew interval 10s"},
		{name: "reserved label", cfg: Config{Name: "x", Labels: map[string]string{ManagedByLabel: "me"}}, want: "reserved"},
		{name: "bad label key", cfg: Config{Name: "x", Labels: map[string]string{"a b": "c"}}, want: `invalid label key "a b"`},
		{name: "bad label value", cfg: Config{Name: "x", Labels: map[string]string{"a": "b c"}}, want: `invalid value "b c" for label a`},
		{name: "no holders", cfg: Config{Name: "x", MaxHolders: -1}, want: "invalid max holders -1: must be from 1 to 100"},
		{name: "too many holders", cfg: Config{Name: "x", MaxHolders: 101}, want: "invalid max holders 101"},
		{name: "unknown order", cfg: Config{Name: "x", Order: "lifo"}, want: `invalid order "lifo": must be "fifo" (first come, first served) or "any"`},
		{name: "a name whose queue name is too long", cfg: Config{Name: strings.Repeat("a", 250)}, want: "the lock also uses the Lease"},
		{name: "a name that is fine for a racing mutex", cfg: Config{Name: strings.Repeat("a", 250), Order: OrderAny}},
		{name: "a short queue TTL", cfg: Config{Name: "x", QueueTTL: time.Second}, want: "invalid queue TTL 1s"},
		{name: "cleanup of a counting lock", cfg: Config{Name: "x", MaxHolders: 2, DeleteOnRelease: true}, want: "cleanup (delete on release) works only with max holders 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.complete()
			if tc.want == "" {
				if err != nil {
					t.Errorf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigTimingsKeepTheirProportions(t *testing.T) {
	for _, tc := range []struct {
		name                string
		lease, renew, retry time.Duration // given
		want                [3]time.Duration
	}{
		{name: "none: client-go's defaults", want: [3]time.Duration{15 * time.Second, 10 * time.Second, 2 * time.Second}},
		{name: "a short lease alone", lease: 3 * time.Second, want: [3]time.Duration{3 * time.Second, 2 * time.Second, 400 * time.Millisecond}},
		{name: "a long lease alone", lease: 60 * time.Second, want: [3]time.Duration{60 * time.Second, 40 * time.Second, 8 * time.Second}},
		{name: "the shortest lease", lease: time.Second, want: [3]time.Duration{time.Second, 666666666, 133333333}},
		{name: "a short renew deadline alone keeps the default lease", renew: 5 * time.Second, want: [3]time.Duration{15 * time.Second, 5 * time.Second, time.Second}},
		{name: "a long renew deadline alone lengthens the lease", renew: 30 * time.Second, want: [3]time.Duration{45 * time.Second, 30 * time.Second, 6 * time.Second}},
		{name: "rounded up to a whole second", renew: 11 * time.Second, want: [3]time.Duration{17 * time.Second, 11 * time.Second, 2200 * time.Millisecond}},
		{name: "a long retry period alone", retry: 4 * time.Second, want: [3]time.Duration{30 * time.Second, 20 * time.Second, 4 * time.Second}},
		{name: "all given are kept", lease: 2 * time.Second, renew: 1500 * time.Millisecond, retry: 300 * time.Millisecond, want: [3]time.Duration{2 * time.Second, 1500 * time.Millisecond, 300 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Config{Name: "x", LeaseDuration: tc.lease, RenewDeadline: tc.renew, RetryPeriod: tc.retry}.complete()
			if err != nil {
				t.Fatal(err)
			}
			if g := [3]time.Duration{got.LeaseDuration, got.RenewDeadline, got.RetryPeriod}; g != tc.want {
				t.Errorf("lease, renew deadline, retry period = %v, want %v", g, tc.want)
			}
		})
	}
}
