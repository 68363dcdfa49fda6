package webhook

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
)

// podWrapper builds pods for tests: MakePod("p", "ns").Container(...).Obj().
type podWrapper struct{ corev1.Pod }

func MakePod(name, namespace string) *podWrapper {
	return &podWrapper{corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: map[string]string{}}}}
}

func (p *podWrapper) Obj() *corev1.Pod { return p.DeepCopy() }

func (p *podWrapper) Annotation(k, v string) *podWrapper {
	p.Annotations[k] = v
	return p
}

// Lease opts the pod in.
func (p *podWrapper) Lease(name string) *podWrapper { return p.Annotation(AnnotationLease, name) }

// Container adds a container; command may be empty (the image decides).
func (p *podWrapper) Container(name, image string, command ...string) *podWrapper {
	p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: name, Image: image, Command: command})
	return p
}

// Args sets the args of the last container added.
func (p *podWrapper) Args(args ...string) *podWrapper {
	p.last().Args = args
	return p
}

// Env adds a variable to the last container added.
func (p *podWrapper) Env(name, value string) *podWrapper {
	c := p.last()
	c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
	return p
}

// Mount adds a volume mount to the last container added.
func (p *podWrapper) Mount(volume, path string) *podWrapper {
	c := p.last()
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: volume, MountPath: path})
	return p
}

// LivenessProbe gives the last container added a liveness probe.
func (p *podWrapper) LivenessProbe() *podWrapper {
	p.last().LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
	return p
}

func (p *podWrapper) last() *corev1.Container { return &p.Spec.Containers[len(p.Spec.Containers)-1] }

// InitContainer adds an init container; sidecar makes it a native sidecar.
func (p *podWrapper) InitContainer(name, image string, sidecar bool) *podWrapper {
	c := corev1.Container{Name: name, Image: image, Command: []string{"init"}}
	if sidecar {
		c.RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
	}
	p.Spec.InitContainers = append(p.Spec.InitContainers, c)
	return p
}

// Volume adds an emptyDir volume.
func (p *podWrapper) Volume(name string) *podWrapper {
	p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	return p
}

// NoServiceAccountToken sets automountServiceAccountToken: false.
func (p *podWrapper) NoServiceAccountToken() *podWrapper {
	p.Spec.AutomountServiceAccountToken = ptr(false)
	return p
}

// Wrapped is what Mutate should make of the pod: container target runs
// command (klock's argv), with the volume and init container added.
func (p *podWrapper) Wrapped(target int, command ...string) *podWrapper {
	w := &podWrapper{*p.DeepCopy()}
	c := &w.Spec.Containers[target]
	c.Command, c.Args = command, nil
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "klock-bin", MountPath: "/klock-bin", ReadOnly: true})
	c.Env = append(c.Env,
		corev1.EnvVar{Name: "KLOCK_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		corev1.EnvVar{Name: "KLOCK_IDENTITY", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
	)
	w.Spec.Volumes = append(w.Spec.Volumes, corev1.Volume{Name: "klock-bin", VolumeSource: corev1.VolumeSource{
		EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr(resourceMust("32Mi"))},
	}})
	w.Spec.InitContainers = append([]corev1.Container{wantInstaller()}, w.Spec.InitContainers...)
	w.Annotations["klock.io/injected"] = c.Name
	return w
}

// Label sets a pod label.
func (p *podWrapper) Label(k, v string) *podWrapper {
	if p.Labels == nil {
		p.Labels = map[string]string{}
	}
	p.Labels[k] = v
	return p
}

// policyWrapper builds ClusterLockPolicies for tests.
type policyWrapper struct {
	klockv1alpha1.ClusterLockPolicy
}

func MakePolicy(name string) *policyWrapper {
	return &policyWrapper{klockv1alpha1.ClusterLockPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}}
}

func (p *policyWrapper) Obj() *klockv1alpha1.ClusterLockPolicy { return p.DeepCopy() }

func (p *policyWrapper) Lease(template string) *policyWrapper { p.Spec.Lease = template; return p }

func (p *policyWrapper) Priority(n int32) *policyWrapper { p.Spec.Priority = n; return p }

func (p *policyWrapper) AllowSkip() *policyWrapper { p.Spec.AllowSkip = true; return p }

func (p *policyWrapper) Kinds(kinds ...klockv1alpha1.WorkloadKind) *policyWrapper {
	p.Spec.WorkloadKinds = kinds
	return p
}

func (p *policyWrapper) Namespaces(matchLabels map[string]string) *policyWrapper {
	p.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: matchLabels}
	return p
}

func (p *policyWrapper) Pods(matchLabels map[string]string) *policyWrapper {
	p.Spec.Selector = &metav1.LabelSelector{MatchLabels: matchLabels}
	return p
}
