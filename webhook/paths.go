package webhook

import "github.com/klock-io/klock/webhook/policy"

// Paths the webhook serves; the MutatingWebhookConfiguration in deploy/
// names them.
const (
	PodsPath      = "/mutate-pods"
	WorkloadsPath = "/mutate-workloads"
	// PolicyPathPrefix starts the paths of the policies' entries:
	// <prefix><policy>/<generation> (see PolicyPath).
	PolicyPathPrefix = PodsPath + policy.EntryPathPrefix
)

// PolicyPath is where the webhook configuration's entry for generation
// generation of policy name sends pods: the pods path, and what
// policy.PolicyWebhook adds to it.
func PolicyPath(name string, generation int64) string {
	return PodsPath + policy.EntryPath(name, generation)
}
