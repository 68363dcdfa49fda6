// Command klock-webhook is the admission webhook that wraps annotated pods
// with klock.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/klock-io/klock/webhook"
)

func main() {
	o := webhook.NewServerOptions()
	fs := pflag.NewFlagSet("klock-webhook", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == pflag.ErrHelp {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "klock-webhook: %v\n", err)
		os.Exit(2)
	}
	ctrl.SetLogger(zap.New())
	os.Exit(run(o))
}

func run(o *webhook.ServerOptions) int {
	cfg, err := config.GetConfig() // $KUBECONFIG, ~/.kube/config or in-cluster
	if o.Kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "klock-webhook: cannot find a cluster: %v\n", err)
		return 1
	}
	if err := webhook.Run(ctrl.SetupSignalHandler(), o, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "klock-webhook: %v\n", err)
		return 1
	}
	return 0
}
