// Command klock-webhook is the admission webhook that wraps annotated pods
// with klock.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/klock-io/klock/internal/version"
	"github.com/klock-io/klock/webhook/server"
)

func main() {
	o := server.NewOptions()
	fs := pflag.NewFlagSet("klock-webhook", pflag.ContinueOnError)
	o.AddFlags(fs)
	showVersion := fs.BoolP("version", "V", false, "Print the version and exit.")
	err := fs.Parse(os.Args[1:])
	switch {
	case errors.Is(err, pflag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintf(os.Stderr, "klock-webhook: %v\n", err)
		os.Exit(2)
	case *showVersion:
		fmt.Printf("klock-webhook %s\n", version.Version)
		os.Exit(0)
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "klock-webhook: %v\n", err)
		os.Exit(2)
	}
	// Structured JSON logs; stack traces only for panics, not for errors
	// a user can fix.
	ctrl.SetLogger(zap.New(zap.StacktraceLevel(zapcore.DPanicLevel)))
	os.Exit(run(o))
}

func run(o *server.Options) int {
	// --kubeconfig, else $KUBECONFIG, ~/.kube/config, in-cluster: as kubectl.
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.Kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		fmt.Fprintf(os.Stderr, "klock-webhook: no cluster to talk to (%v): run it in a pod with a service account, or pass --kubeconfig\n", err)
		return 1
	}
	if err := server.Run(ctrl.SetupSignalHandler(), o, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "klock-webhook: %v\n", err)
		return 1
	}
	return 0
}
