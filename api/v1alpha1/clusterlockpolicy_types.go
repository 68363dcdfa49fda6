package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WorkloadKind is the kind of a pod's controlling workload, as a policy
// selects it. A Job's pod belongs to its CronJob when it has one, and a
// ReplicaSet's to its Deployment.
// +kubebuilder:validation:Enum=CronJob;Job;Deployment;StatefulSet;DaemonSet
type WorkloadKind string

// The workload kinds a policy can select.
const (
	CronJob     WorkloadKind = "CronJob"
	Job         WorkloadKind = "Job"
	Deployment  WorkloadKind = "Deployment"
	StatefulSet WorkloadKind = "StatefulSet"
	DaemonSet   WorkloadKind = "DaemonSet"
)

// DefaultLease is the lease template of a policy that does not give one:
// one lock per workload.
const DefaultLease = "{kind}-{name}"

// ClusterLockPolicySpec selects pods and says how klock wraps them. Each
// option is a default: a pod's own klock.io/ annotation overrides it;
// except, in a policy without allowSkip, the lease, the container and
// maxHolders, which the policy decides and a pod may only repeat.
//
// The timings left out are derived from those given in client-go's
// proportions (leaseDuration 15 : renewDeadline 10 : retryPeriod 2), as
// klock derives them, so only timings given can contradict each other.
//
// +kubebuilder:validation:XValidation:rule="!has(self.renewDeadline) || !has(self.leaseDuration) || duration(self.renewDeadline) < duration(self.leaseDuration)",message="renewDeadline must be below leaseDuration, so that a holder notices the loss before the lease can expire"
// +kubebuilder:validation:XValidation:rule="!has(self.maxHolders) || self.maxHolders <= 1 || !has(self.cleanupLease) || !self.cleanupLease",message="cleanupLease works only with maxHolders 1: a counting lock keeps its Leases, which record the count"
// +kubebuilder:validation:XValidation:rule="!has(self.retryPeriod) || (has(self.renewDeadline) ? duration(self.retryPeriod) < duration(self.renewDeadline) : (!has(self.leaseDuration) || duration(self.retryPeriod).getMilliseconds() * 3 < duration(self.leaseDuration).getMilliseconds() * 2))",message="retryPeriod must be below renewDeadline (given, or two thirds of leaseDuration), so that a holder tries to renew more than once"
type ClusterLockPolicySpec struct {
	// NamespaceSelector selects the namespaces whose pods the policy
	// applies to. Empty selects every namespace the webhook serves.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// Selector selects pods by their labels. Empty selects every pod.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`

	// WorkloadKinds restricts the policy to pods whose controlling workload
	// is of one of these kinds; a CronJob's pods count as CronJob, not Job.
	// Empty: any pod, with or without a workload.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=5
	WorkloadKinds []WorkloadKind `json:"workloadKinds,omitempty"`

	// Lease is the name of the Lease to hold, in the pod's namespace, as a
	// template: {namespace}, {kind} (the controlling workload's kind, in
	// lower case: cronjob, job, deployment, statefulset, daemonset,
	// replicaset, or pod for a pod without one), {name} (that workload's
	// name: a CronJob's, not its Job's) and {label:<key>} (a pod label's
	// value, in lower case with _ as -) between lower-case letters, digits,
	// '-' and '.'.
	// +optional
	// +kubebuilder:default="{kind}-{name}"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^([a-z0-9.-]|[{](namespace|kind|name)[}]|[{]label:([A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?[}])+$')",message="must be a lease name of lower-case letters, digits, '-' and '.', with placeholders {namespace}, {kind}, {name} or {label:<key>}"
	Lease string `json:"lease,omitempty"`

	// Priority decides between policies that select the same pod: the
	// highest applies. Policies of equal priority that select one pod
	// have that pod denied, naming them, rather than one picked silently.
	// +optional
	// +kubebuilder:validation:Minimum=-1000
	// +kubebuilder:validation:Maximum=1000
	Priority int32 `json:"priority,omitempty"`

	// AllowSkip lets a pod opt out with the annotation klock.io/skip:
	// "true", and choose its own lease and container. Without it, such a
	// pod is denied.
	// +optional
	AllowSkip bool `json:"allowSkip,omitempty"`

	// GrantLeaseAccess has the webhook keep a Role and RoleBinding that let
	// each selected workload's service account use its Lease, and nothing
	// else. The webhook must run with --lease-access=policy or all.
	// +optional
	GrantLeaseAccess bool `json:"grantLeaseAccess,omitempty"`

	// Container is the container to wrap (klock.io/container). Without
	// allowSkip, a pod may not name another, and a policy that names none
	// wraps the pod's first container.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Container string `json:"container,omitempty"`

	// Wait bounds the wait for the lock (klock.io/wait); 0 waits forever.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self == '0' || self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')",message="must be a duration such as 30s, 1m30s or 2h, or 0 to wait forever"
	Wait string `json:"wait,omitempty"`

	// ConflictExitCode is the exit status when the lock is not got in time
	// (klock.io/conflict-exit-code).
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=255
	ConflictExitCode *int32 `json:"conflictExitCode,omitempty"`

	// LeaseDuration is how long a lease lasts without renewal
	// (klock.io/lease-duration): whole seconds, at least 1s.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != '' && duration(self) >= duration('1s')",message="must be a whole number of seconds, at least 1s, such as 15s or 1m"
	LeaseDuration string `json:"leaseDuration,omitempty"`

	// RenewDeadline is how long the holder keeps trying to renew before it
	// gives the lease up (klock.io/renew-deadline).
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) > duration('0s')",message="must be a duration above 0, such as 10s"
	RenewDeadline string `json:"renewDeadline,omitempty"`

	// RetryPeriod is the time between attempts (klock.io/retry-period).
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) > duration('0s')",message="must be a duration above 0, such as 2s"
	RetryPeriod string `json:"retryPeriod,omitempty"`

	// Signal is sent to the command when the lease is lost
	// (klock.io/signal).
	// +optional
	// +kubebuilder:validation:Enum=HUP;INT;QUIT;KILL;USR1;USR2;TERM;ALRM;PIPE;CONT;STOP;TSTP;WINCH;ABRT
	Signal string `json:"signal,omitempty"`

	// KillAfter sends KILL this long after the signal (klock.io/kill-after).
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self == '0' || self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')",message="must be a duration such as 10s, or 0 for never"
	KillAfter string `json:"killAfter,omitempty"`

	// CleanupLease deletes the Lease on release (klock.io/cleanup-lease).
	// +optional
	CleanupLease bool `json:"cleanupLease,omitempty"`

	// Labels are put on the Lease (klock.io/labels).
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	Labels map[string]string `json:"labels,omitempty"`

	// MaxHolders is how many pods may hold the lock at once
	// (klock.io/max-holders): a counting lock, whose holders take the
	// Leases <lease>, <lease>-1 ... <lease>-<N-1>. Default 1, a mutex.
	// Without allowSkip, a pod may not give another count. A counting
	// lock cannot have cleanupLease.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	MaxHolders int32 `json:"maxHolders,omitempty"`

	// Order is who gets the lock first (klock.io/order): fifo, the
	// waiters in the order they came, queued in the Lease <lease>-queue
	// (the default), or any, whoever writes first after a release.
	// +optional
	// +kubebuilder:validation:Enum=fifo;any
	Order string `json:"order,omitempty"`

	// Gate makes the selected pods wait for their lock SchedulingGated
	// (klock.io/gate): created with the scheduling gate klock.io/lock, on
	// no node and holding nothing, until the lock is reserved for them.
	// Unset: the webhook's --gating decides (opt-in: not gated; default:
	// gated). With --gating=off, or in a namespace outside
	// --gating-namespaces, a policy that sets true has its pods denied
	// (and unset, its pods there are not gated). A pod's own
	// klock.io/gate overrides it, with or without
	// allowSkip: where a pod waits does not change who holds the lock.
	// +optional
	Gate *bool `json:"gate,omitempty"`

	// StartTimeout is how long a gated pod, once the lock is reserved for
	// it and its gate removed, has to start and take the lock
	// (klock.io/start-timeout): above 0, at most 24h; default 5m. A pod's
	// own klock.io/start-timeout overrides it, as for gate.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) > duration('0s') && duration(self) <= duration('24h')",message="must be a duration above 0 and at most 24h, such as 90s, 5m or 1h30m"
	StartTimeout *metav1.Duration `json:"startTimeout,omitempty"`
}

// Condition types of a ClusterLockPolicy.
const (
	// ConditionReady is True once the webhook configuration sends the
	// pods the policy selects to the webhook: from then on no such pod is
	// admitted unwrapped.
	ConditionReady = "Ready"
)

// ClusterLockPolicyStatus is what the webhook has made of a policy.
type ClusterLockPolicyStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Workloads is how many workloads (CronJobs, Jobs of no CronJob,
	// Deployments, StatefulSets, DaemonSets) the policy selects now, by
	// their pod templates.
	// +optional
	Workloads int32 `json:"workloads"`

	// Conditions: Ready.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ClusterLockPolicy runs the pods it selects under a lock, as if each
// carried the klock.io/lease annotation.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=clp,categories=klock
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Lease",type=string,JSONPath=`.spec.lease`
// +kubebuilder:printcolumn:name="Kinds",type=string,JSONPath=`.spec.workloadKinds`
// +kubebuilder:printcolumn:name="Priority",type=integer,JSONPath=`.spec.priority`
// +kubebuilder:printcolumn:name="Max Holders",type=integer,JSONPath=`.spec.maxHolders`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Workloads",type=integer,JSONPath=`.status.workloads`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 200",message="metadata.name must be at most 200 characters: the webhook configuration names an entry after it"
type ClusterLockPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ClusterLockPolicySpec   `json:"spec,omitempty"`
	Status ClusterLockPolicyStatus `json:"status,omitempty"`
}

// ClusterLockPolicyList is a list of ClusterLockPolicy.
//
// +kubebuilder:object:root=true
type ClusterLockPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ClusterLockPolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ClusterLockPolicy{}, &ClusterLockPolicyList{})
}
