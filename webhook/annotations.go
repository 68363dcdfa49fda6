// Package webhook wraps annotated pods with klock at admission: an init
// container copies the klock binary into a shared volume, and the target
// container's command becomes `klock -l <lease> [flags] -- <original argv>`.
//
// Mutate is the whole change to the pod, a pure function with no HTTP and
// no API client in it; the admission handler decodes the request, resolves
// the image's entrypoint when the container does not set a command, and
// turns Mutate's result into a JSON patch.
package webhook

// Annotation keys users set on pods, or on workloads whose pod templates
// receive them.
const (
	// AnnotationLease opts a pod in: the name of the Lease to hold.
	AnnotationLease = "klock.io/lease"
	// AnnotationContainer names the container to wrap. Default: the one
	// named by kubectl.kubernetes.io/default-container, else the first.
	AnnotationContainer = "klock.io/container"

	AnnotationWait             = "klock.io/wait"
	AnnotationConflictExitCode = "klock.io/conflict-exit-code"
	AnnotationLeaseDuration    = "klock.io/lease-duration"
	AnnotationRenewDeadline    = "klock.io/renew-deadline"
	AnnotationRetryPeriod      = "klock.io/retry-period"
	AnnotationSignal           = "klock.io/signal"
	AnnotationKillAfter        = "klock.io/kill-after"
	AnnotationCleanupLease     = "klock.io/cleanup-lease"
	AnnotationLabels           = "klock.io/labels"

	// AnnotationInjected is set by the webhook on the pods it wrapped, to
	// the name of the wrapped container.
	AnnotationInjected = "klock.io/injected"

	// AnnotationDefaultContainer is kubectl's choice of container.
	AnnotationDefaultContainer = "kubectl.kubernetes.io/default-container"
)

// flagAnnotations maps each annotation that sets a klock flag to the flag's
// long name, in the order the flags are written into the command.
var flagAnnotations = []struct{ annotation, flag string }{
	{AnnotationWait, "wait"},
	{AnnotationConflictExitCode, "conflict-exit-code"},
	{AnnotationLeaseDuration, "lease-duration"},
	{AnnotationRenewDeadline, "renew-deadline"},
	{AnnotationRetryPeriod, "retry-period"},
	{AnnotationSignal, "signal"},
	{AnnotationKillAfter, "kill-after"},
	{AnnotationCleanupLease, "cleanup-lease"},
	{AnnotationLabels, "labels"},
}

// What the webhook adds to a pod. The names are reserved: a pod that uses
// one for something else is denied rather than changed.
const (
	VolumeName        = "klock-bin"
	InitContainerName = "klock-install"
	MountPath         = "/klock-bin"
	// BinaryPath is where the wrapped container finds klock.
	BinaryPath = MountPath + "/klock"
	// ImageBinaryPath is where the klock image holds klock.
	ImageBinaryPath = "/klock"
)

// Annotations of ClusterLockPolicy.
const (
	// AnnotationSkip "true" opts a pod out of the policy that selects it,
	// where that policy allows it.
	AnnotationSkip = "klock.io/skip"
	// AnnotationPolicy is set by the webhook to the name of the
	// ClusterLockPolicy that it wrapped a pod for.
	AnnotationPolicy = "klock.io/policy"
)
