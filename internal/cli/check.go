package cli

import (
	"context"
	"io"
	"slices"

	"github.com/spf13/pflag"
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
