package wrap

// Every annotation and label key klock reads or writes, and every name it
// reserves in the pods it wraps, is here, documented once.

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
	// AnnotationMaxHolders makes the lock a counting one, of that many
	// holders, and AnnotationOrder says who gets it first (fifo or any):
	// both decide which Leases the lock touches (klock.LeaseNames), and
	// so what the pod's service account needs.
	AnnotationMaxHolders = "klock.io/max-holders"
	AnnotationOrder      = "klock.io/order"

	// AnnotationInjected is set by the webhook on the pods it wrapped, to
	// the name of the wrapped container.
	AnnotationInjected = "klock.io/injected"

	// AnnotationDefaultContainer is kubectl's choice of container.
	AnnotationDefaultContainer = "kubectl.kubernetes.io/default-container"
)

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

// AnnotationPrefix starts every annotation klock reads.
const AnnotationPrefix = "klock.io/"

// Labels the webhook sets on the objects it makes.
const (
	// LabelManagedBy marks the Roles and RoleBindings the Lease access
	// controller keeps, with the value ManagedByWebhook: it deletes only
	// those, and its cache holds only those.
	LabelManagedBy   = "app.kubernetes.io/managed-by"
	ManagedByWebhook = "klock-webhook"
)

// userKeys are the klock.io/ annotation keys a pod's or workload's author
// may set.
var userKeys = []string{
	AnnotationLease, AnnotationContainer, AnnotationWait, AnnotationConflictExitCode,
	AnnotationLeaseDuration, AnnotationRenewDeadline, AnnotationRetryPeriod, AnnotationSignal,
	AnnotationKillAfter, AnnotationCleanupLease, AnnotationLabels, AnnotationMaxHolders, AnnotationOrder,
	AnnotationSkip,
}

// knownKeys are the klock.io/ annotation keys klock reads or writes.
var knownKeys = append(userKeys[:len(userKeys):len(userKeys)], AnnotationInjected, AnnotationPolicy)
