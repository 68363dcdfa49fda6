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
		got.RenewDeadline != DefaultRenewDeadline || got.RetryPeriod != DefaultRetryPeriod || got.RenewInterval != DefaultRetryPeriod {
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
		{name: "fractional duration", cfg: Config{Name: "x", LeaseDuration: 2500 * time.Millisecond}, want: "whole number of seconds"},
		{name: "renew deadline too long", cfg: Config{Name: "x", RenewDeadline: 15 * time.Second}, want: "below the lease duration 15s"},
		{name: "retry period too long", cfg: Config{Name: "x", RetryPeriod: 10 * time.Second}, want: "below the renew deadline 10s"},
		{name: "renew interval too long", cfg: Config{Name: "x", RenewInterval: 10 * time.Second}, want: "invalid renew interval 10s"},
		{name: "reserved label", cfg: Config{Name: "x", Labels: map[string]string{ManagedByLabel: "me"}}, want: "reserved"},
		{name: "bad label key", cfg: Config{Name: "x", Labels: map[string]string{"a b": "c"}}, want: `invalid label key "a b"`},
		{name: "bad label value", cfg: Config{Name: "x", Labels: map[string]string{"a": "b c"}}, want: `invalid value "b c" for label a`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.complete()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
