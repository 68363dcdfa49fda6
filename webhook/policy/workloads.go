package policy

import (
	"context"
	"maps"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
)

// WorkloadTemplate is a workload as the policies see it: what it is, and
// the pod template its pods are made from.
type WorkloadTemplate struct {
	Workload
	Object   client.Object
	Template *corev1.PodTemplateSpec
}

// Pod is a pod as the workload would make it, for selecting and wrapping
// decisions made ahead of its pods. Its annotations are a copy: the
// template may be the cache's.
func (w WorkloadTemplate) Pod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   w.Object.GetNamespace(),
			Labels:      w.Template.Labels,
			Annotations: maps.Clone(w.Template.Annotations),
		},
		// The containers, for a policy that wraps the first by name.
		Spec: corev1.PodSpec{ServiceAccountName: w.Template.Spec.ServiceAccountName, Containers: slices.Clone(w.Template.Spec.Containers)},
	}
}

// WorkloadObjects are the kinds of workload policies select.
func WorkloadObjects() []client.Object {
	return []client.Object{&batchv1.CronJob{}, &batchv1.Job{}, &appsv1.Deployment{}, &appsv1.StatefulSet{}, &appsv1.DaemonSet{}}
}

// TemplateOf returns obj as a WorkloadTemplate; ok is false for a Job that
// a CronJob controls, since the CronJob is the workload.
func TemplateOf(obj client.Object) (w WorkloadTemplate, ok bool) {
	w.Object, w.Name = obj, obj.GetName()
	switch o := obj.(type) {
	case *batchv1.CronJob:
		w.Kind, w.Template = string(klockv1alpha1.CronJob), &o.Spec.JobTemplate.Spec.Template
	case *batchv1.Job:
		if ref := metav1.GetControllerOf(o); ref != nil && ref.Kind == "CronJob" {
			return w, false
		}
		w.Kind, w.Template = string(klockv1alpha1.Job), &o.Spec.Template
	case *appsv1.Deployment:
		w.Kind, w.Template = string(klockv1alpha1.Deployment), &o.Spec.Template
	case *appsv1.StatefulSet:
		w.Kind, w.Template = string(klockv1alpha1.StatefulSet), &o.Spec.Template
	case *appsv1.DaemonSet:
		w.Kind, w.Template = string(klockv1alpha1.DaemonSet), &o.Spec.Template
	default:
		return w, false
	}
	return w, true
}

// eachWorkload calls fn for every workload in the cache, with its
// namespace's labels.
func eachWorkload(ctx context.Context, c client.Client, fn func(WorkloadTemplate, map[string]string)) error {
	var namespaces metav1.PartialObjectMetadataList
	namespaces.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("NamespaceList"))
	if err := c.List(ctx, &namespaces); err != nil {
		return err
	}
	nsLabels := map[string]map[string]string{}
	for _, ns := range namespaces.Items {
		nsLabels[ns.Name] = ns.Labels
	}
	for _, obj := range WorkloadObjects() {
		items, err := ListWorkloads(ctx, c, obj)
		if err != nil {
			return err
		}
		for _, o := range items {
			if w, ok := TemplateOf(o); ok {
				fn(w, nsLabels[w.Object.GetNamespace()])
			}
		}
	}
	return nil
}

// ListWorkloads lists, through c, the workloads of kind's kind (one of
// WorkloadObjects).
func ListWorkloads(ctx context.Context, c client.Client, kind client.Object, opts ...client.ListOption) ([]client.Object, error) {
	list, err := listFor(c, kind)
	if err != nil {
		return nil, err
	}
	if err := c.List(ctx, list, opts...); err != nil {
		return nil, err
	}
	var items []client.Object
	err = meta.EachListItem(list, func(o runtime.Object) error {
		items = append(items, o.(client.Object))
		return nil
	})
	return items, err
}

// listFor returns an empty list of obj's kind, from c's scheme.
func listFor(c client.Client, obj client.Object) (client.ObjectList, error) {
	gvk, err := c.GroupVersionKindFor(obj)
	if err != nil {
		return nil, err
	}
	list, err := c.Scheme().New(gvk.GroupVersion().WithKind(gvk.Kind + "List"))
	if err != nil {
		return nil, err
	}
	return list.(client.ObjectList), nil
}

// TrimWorkload keeps of a cached workload only what policies and Lease
// access read: metadata, and its pod template's metadata and service
// account. A cluster's Jobs and Deployments then cost little memory. It is
// a cache.TransformFunc for the kinds of WorkloadObjects.
func TrimWorkload(obj any) (any, error) {
	trim := func(t *corev1.PodTemplateSpec) {
		*t = corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: t.Labels, Annotations: t.Annotations},
			Spec:       corev1.PodSpec{ServiceAccountName: t.Spec.ServiceAccountName},
		}
	}
	switch o := obj.(type) {
	case *batchv1.CronJob:
		tmpl := o.Spec.JobTemplate.Spec.Template
		trim(&tmpl)
		o.Spec = batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: tmpl}}}
		o.Status = batchv1.CronJobStatus{}
	case *batchv1.Job:
		trim(&o.Spec.Template)
		o.Spec = batchv1.JobSpec{Template: o.Spec.Template}
		o.Status = batchv1.JobStatus{}
	case *appsv1.Deployment:
		trim(&o.Spec.Template)
		o.Spec = appsv1.DeploymentSpec{Template: o.Spec.Template}
		o.Status = appsv1.DeploymentStatus{}
	case *appsv1.StatefulSet:
		trim(&o.Spec.Template)
		o.Spec = appsv1.StatefulSetSpec{Template: o.Spec.Template}
		o.Status = appsv1.StatefulSetStatus{}
	case *appsv1.DaemonSet:
		trim(&o.Spec.Template)
		o.Spec = appsv1.DaemonSetSpec{Template: o.Spec.Template}
		o.Status = appsv1.DaemonSetStatus{}
	}
	if o, ok := obj.(metav1.Object); ok {
		o.SetManagedFields(nil)
	}
	return obj, nil
}
