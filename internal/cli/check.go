package cli

import (
	"context"
	"io"
	"slices"

	"github.com/spf13/pflag"

	"github.com/klock-io/klock/klock"
)

// CheckFlag parses value as klock would parse the flag called name (the
// long name, without dashes), so that other front ends, such as the
// admission webhook, accept exactly what klock accepts.
func CheckFlag(name, value string) error {
	fs := pflag.NewFlagSet("klock", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	NewOptions().AddFlags(fs)
	return fs.Set(name, value)
}

// CheckArgs parses args (flags only) as klock would, and checks the lock
// settings they make together, such as a renew deadline below the lease
// duration, without running anything.
func CheckArgs(args []string) error {
	return Execute(context.Background(), append(slices.Clone(args), "--", "true"), Streams{Out: io.Discard, Err: io.Discard},
		func(_ context.Context, o *Options, _ Streams) error {
			if o.Namespace == "" {
				o.Namespace = "default" // where is irrelevant to the check
			}
			cfg, err := o.lockConfig(func(string) string { return "" }, nil).Complete()
			if err != nil {
				return err
			}
			_, err = o.killAfter(cfg)
			return err
		})
}

// ParseFlags parses args (flags only) as klock would, for a program that
// acts for a klock yet to start: the webhook's gate controller reserves a
// lock with the settings the pod's klock will hold it with.
func ParseFlags(args []string) (*Options, error) {
	var parsed *Options
	err := Execute(context.Background(), append(slices.Clone(args), "--", "true"), Streams{Out: io.Discard, Err: io.Discard},
		func(_ context.Context, o *Options, _ Streams) error {
			parsed = o
			return nil
		})
	if err != nil {
		return nil, err
	}
	return parsed, nil
}

// LockConfigFor is the lock configuration klock runs with under o, in
// namespace, as identity, whatever the environment says.
func (o *Options) LockConfigFor(namespace, identity string) klock.Config {
	c := *o
	c.Namespace, c.Identity, c.GenerateIdentity = namespace, identity, false
	return c.lockConfig(func(string) string { return "" }, nil)
}
