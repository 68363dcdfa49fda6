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
	// AnnotationQueueTTL is how long a waiting pod that died keeps its
	// place in the lock's queue (--queue-ttl): a node lost under a waiting
	// pod holds the line up that long.
	AnnotationQueueTTL = "klock.io/queue-ttl"

	// AnnotationGate, "true" or "false", says whether a wrapped pod waits
	// for its lock SchedulingGated (see Options.Gating): on no node,
	// holding no resources, until the gate controller reserves the lock
	// for it and removes SchedulingGate. AnnotationStartTimeout is how
	// long such a pod, once ungated, has to take the lock reserved for it
	// (DefaultStartTimeout). Neither is a klock flag: the webhook and the
	// gate controller read them, and the wrapped command is the same
	// either way.
	AnnotationGate         = "klock.io/gate"
	AnnotationStartTimeout = "klock.io/start-timeout"

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

	// LabelGated, with the value "true", marks the pods the webhook gated,
	// so that the gate controller's cache holds only those.
	LabelGated = "klock.io/gated"
)

// SchedulingGate is the scheduling gate the webhook gives the pods it
// gates, and the gate controller removes when it is the pod's turn. It is
// klock's: only a wrapped pod may carry it.
const SchedulingGate = "klock.io/lock"

// userKeys are the klock.io/ annotation keys a pod's or workload's author
// may set.
var userKeys = []string{
	AnnotationLease, AnnotationContainer, AnnotationWait, AnnotationConflictExitCode,
	AnnotationLeaseDuration, AnnotationRenewDeadline, AnnotationRetryPeriod, AnnotationSignal,
	AnnotationKillAfter, AnnotationCleanupLease, AnnotationLabels, AnnotationMaxHolders, AnnotationOrder, AnnotationQueueTTL,
	AnnotationGate, AnnotationStartTimeout, AnnotationSkip,
}

// knownKeys are the klock.io/ annotation keys klock reads or writes.
var knownKeys = append(userKeys[:len(userKeys):len(userKeys)], AnnotationInjected, AnnotationPolicy)
