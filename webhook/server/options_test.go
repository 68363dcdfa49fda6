package server

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestOptions(t *testing.T) {
	parse := func(args ...string) (*Options, error) {
		o := NewOptions()
		fs := pflag.NewFlagSet("klock-webhook", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		return o, o.Validate()
	}
	o, err := parse("--klock-image", "ghcr.io/klock-io/klock:v1", "--webhook-port", "10250", "--webhook-cert-path", "/certs", "--default-platform", "linux/arm64/v8")
	if err != nil {
		t.Fatal(err)
	}
	if o.Port != 10250 || o.CertDir != "/certs" || o.KlockImage != "ghcr.io/klock-io/klock:v1" || o.EnableHTTP2 || o.DefaultPlatform != "linux/arm64/v8" {
		t.Errorf("options: %+v", o)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{args: nil, want: "--klock-image is required"},
		{args: []string{"--klock-image", "x", "--klock-image-pull-policy", "Sometimes"}, want: `--klock-image-pull-policy "Sometimes": give Always, IfNotPresent or Never`},
		{args: []string{"--klock-image", "x", "--webhook-port", "0"}, want: "--webhook-port 0: give a port from 1 to 65535"},
		{args: []string{"--klock-image", "x", "--image-cache-size", "0"}, want: "--image-cache-size 0: give at least 1"},
		{args: []string{"--klock-image", "x", "--image-timeout", "0s"}, want: "--image-timeout 0s: give a positive duration"},
		{args: []string{"--klock-image", "x", "--lease-access", "some"}, want: `--lease-access "some": give off, policy or all`},
		{args: []string{"--klock-image", "x", "--lease-access", "all", "--policies=false"}, want: "--lease-access all needs --policies"},
		{args: []string{"--klock-image", "x", "--webhook-configuration", ""}, want: "--webhook-configuration is required with --policies"},
	} {
		if _, err := parse(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}
