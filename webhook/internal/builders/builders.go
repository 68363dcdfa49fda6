// Package builders builds the pods and ClusterLockPolicies of the
// webhook's unit tests, fluently, as MakePod("p", "ns").Container(...).Obj(),
// and spells out what a wrapped pod looks like (PodBuilder.Wrapped), so that
// a change to what klock adds to pods is a change to the tests too. Only
// tests import it.
package builders

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/webhook/wrap"
)

// PodBuilder builds a pod: MakePod("p", "ns").Container(...).Obj().
type PodBuilder struct{ corev1.Pod }

// MakePod starts a pod with no containers and no annotations.
func MakePod(name, namespace string) *PodBuilder {
	return &PodBuilder{corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: map[string]string{}}}}
}

// Obj returns a copy of the pod built so far.
func (p *PodBuilder) Obj() *corev1.Pod { return p.DeepCopy() }

// Annotation sets an annotation.
func (p *PodBuilder) Annotation(k, v string) *PodBuilder {
	p.Annotations[k] = v
	return p
}

// Lease opts the pod in.
func (p *PodBuilder) Lease(name string) *PodBuilder { return p.Annotation(wrap.AnnotationLease, name) }

// Container adds a container; command may be empty (the image decides).
func (p *PodBuilder) Container(name, image string, command ...string) *PodBuilder {
	p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: name, Image: image, Command: command})
	return p
}

// Args sets the args of the last container added.
func (p *PodBuilder) Args(args ...string) *PodBuilder {
	p.last().Args = args
	return p
}

// Env adds a variable to the last container added.
func (p *PodBuilder) Env(name, value string) *PodBuilder {
	c := p.last()
	c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
	return p
}

// Mount adds a volume mount to the last container added.
func (p *PodBuilder) Mount(volume, path string) *PodBuilder {
	c := p.last()
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: volume, MountPath: path})
	return p
}

// LivenessProbe gives the last container added a liveness probe.
func (p *PodBuilder) LivenessProbe() *PodBuilder {
	p.last().LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
	return p
}

func (p *PodBuilder) last() *corev1.Container { return &p.Spec.Containers[len(p.Spec.Containers)-1] }

// InitContainer adds an init container; sidecar makes it a native sidecar.
func (p *PodBuilder) InitContainer(name, image string, sidecar bool) *PodBuilder {
	c := corev1.Container{Name: name, Image: image, Command: []string{"init"}}
	if sidecar {
		c.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
	}
	p.Spec.InitContainers = append(p.Spec.InitContainers, c)
	return p
}

// Volume adds an emptyDir volume.
func (p *PodBuilder) Volume(name string) *PodBuilder {
	p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	return p
}

// NoServiceAccountToken sets automountServiceAccountToken: false.
func (p *PodBuilder) NoServiceAccountToken() *PodBuilder {
	p.Spec.AutomountServiceAccountToken = ptr.To(false)
	return p
}

// Wrapped is what Mutate, with the klock image ghcr.io/klock-io/klock:v1
// pulled IfNotPresent, should make of the pod: container target runs
// command (klock's argv), with the volume and init container added.
func (p *PodBuilder) Wrapped(target int, command ...string) *PodBuilder {
	w := &PodBuilder{*p.DeepCopy()}
	c := &w.Spec.Containers[target]
	c.Command, c.Args = command, nil
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "klock-bin", MountPath: "/klock-bin", ReadOnly: true})
	c.Env = append(c.Env,
		corev1.EnvVar{Name: "KLOCK_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		corev1.EnvVar{Name: "KLOCK_IDENTITY", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
	)
	w.Spec.Volumes = append(w.Spec.Volumes, corev1.Volume{Name: "klock-bin", VolumeSource: corev1.VolumeSource{
		EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("32Mi"))},
	}})
	w.Spec.InitContainers = append([]corev1.Container{installer()}, w.Spec.InitContainers...)
	w.Annotations["klock.io/injected"] = c.Name
	return w
}

// SchedulingGate adds a scheduling gate.
func (p *PodBuilder) SchedulingGate(name string) *PodBuilder {
	p.Spec.SchedulingGates = append(p.Spec.SchedulingGates, corev1.PodSchedulingGate{Name: name})
	return p
}

// Gated is what Mutate adds to a pod it gates: klock's scheduling gate,
// after the pod's own, and the label klock.io/gated=true.
func (p *PodBuilder) Gated() *PodBuilder {
	return p.SchedulingGate("klock.io/lock").Label("klock.io/gated", "true")
}

// Label sets a pod label.
func (p *PodBuilder) Label(k, v string) *PodBuilder {
	if p.Labels == nil {
		p.Labels = map[string]string{}
	}
	p.Labels[k] = v
	return p
}

// PolicyBuilder builds a ClusterLockPolicy: MakePolicy("p").Priority(1).Obj().
type PolicyBuilder struct {
	klockv1alpha1.ClusterLockPolicy
}

// MakePolicy starts a policy with an empty spec: every pod, the default
// lease.
func MakePolicy(name string) *PolicyBuilder {
	return &PolicyBuilder{klockv1alpha1.ClusterLockPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}}
}

// Obj returns a copy of the policy built so far.
func (p *PolicyBuilder) Obj() *klockv1alpha1.ClusterLockPolicy { return p.DeepCopy() }

// Lease sets the lease template.
func (p *PolicyBuilder) Lease(template string) *PolicyBuilder { p.Spec.Lease = template; return p }

// Priority sets the priority.
func (p *PolicyBuilder) Priority(n int32) *PolicyBuilder { p.Spec.Priority = n; return p }

// AllowSkip lets pods opt out.
func (p *PolicyBuilder) AllowSkip() *PolicyBuilder { p.Spec.AllowSkip = true; return p }

// Gate sets spec.gate.
func (p *PolicyBuilder) Gate(on bool) *PolicyBuilder { p.Spec.Gate = ptr.To(on); return p }

// StartTimeout sets spec.startTimeout.
func (p *PolicyBuilder) StartTimeout(d time.Duration) *PolicyBuilder {
	p.Spec.StartTimeout = &metav1.Duration{Duration: d}
	return p
}

// Kinds sets the workload kinds.
func (p *PolicyBuilder) Kinds(kinds ...klockv1alpha1.WorkloadKind) *PolicyBuilder {
	p.Spec.WorkloadKinds = kinds
	return p
}

// Namespaces sets the namespace selector.
func (p *PolicyBuilder) Namespaces(matchLabels map[string]string) *PolicyBuilder {
	p.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: matchLabels}
	return p
}

// Pods sets the pod selector.
func (p *PolicyBuilder) Pods(matchLabels map[string]string) *PolicyBuilder {
	p.Spec.Selector = &metav1.LabelSelector{MatchLabels: matchLabels}
	return p
}

// installer spells out the init container for the image
// ghcr.io/klock-io/klock:v1, so that a change to it is a change to the
// tests too.
func installer() corev1.Container {
	return corev1.Container{
		Name:            "klock-install",
		Image:           "ghcr.io/klock-io/klock:v1",
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         []string{"/klock", "install", "/klock-bin/klock"},
		VolumeMounts:    []corev1.VolumeMount{{Name: "klock-bin", MountPath: "/klock-bin"}},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("200m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(65532)), ReadOnlyRootFilesystem: ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}
