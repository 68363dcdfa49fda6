package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/klock-io/klock/webhook/wrap"
)

// Propagate copies the klock.io/ annotations of a workload's own metadata
// into its pod template, so that annotating a CronJob or a Deployment is
// enough. The workload's values win over the template's. It reports
// whether the template changed.
func Propagate(annotations map[string]string, template *corev1.PodTemplateSpec) bool {
	changed := false
	for k, v := range annotations {
		if !strings.HasPrefix(k, wrap.AnnotationPrefix) || k == wrap.AnnotationInjected {
			continue
		}
		if cur, ok := template.Annotations[k]; ok && cur == v {
			continue
		}
		if template.Annotations == nil {
			template.Annotations = map[string]string{}
		}
		template.Annotations[k] = v
		changed = true
	}
	return changed
}

// workloads are the kinds whose pod templates receive klock.io/
// annotations, with where each keeps its template. A Job's template cannot
// change after creation, so Jobs are handled on create only.
var workloads = map[schema.GroupKind]struct {
	new      func() client.Object
	template func(client.Object) *corev1.PodTemplateSpec
	onUpdate bool
}{
	{Group: "batch", Kind: "CronJob"}: {
		func() client.Object { return &batchv1.CronJob{} },
		func(o client.Object) *corev1.PodTemplateSpec {
			return &o.(*batchv1.CronJob).Spec.JobTemplate.Spec.Template
		}, true},
	{Group: "batch", Kind: "Job"}: {
		func() client.Object { return &batchv1.Job{} },
		func(o client.Object) *corev1.PodTemplateSpec { return &o.(*batchv1.Job).Spec.Template }, false},
	{Group: "apps", Kind: "Deployment"}: {
		func() client.Object { return &appsv1.Deployment{} },
		func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.Deployment).Spec.Template }, true},
	{Group: "apps", Kind: "StatefulSet"}: {
		func() client.Object { return &appsv1.StatefulSet{} },
		func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.StatefulSet).Spec.Template }, true},
	{Group: "apps", Kind: "DaemonSet"}: {
		func() client.Object { return &appsv1.DaemonSet{} },
		func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.DaemonSet).Spec.Template }, true},
	{Group: "apps", Kind: "ReplicaSet"}: {
		func() client.Object { return &appsv1.ReplicaSet{} },
		func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.ReplicaSet).Spec.Template }, true},
}

// WorkloadHandler admits workloads: it copies their klock.io/ annotations
// into their pod templates. The pods are wrapped by PodHandler when created.
type WorkloadHandler struct {
	decoder admission.Decoder
}

var _ admission.Handler = &WorkloadHandler{}

// NewWorkloadHandler returns the workload handler.
func NewWorkloadHandler(scheme *runtime.Scheme) *WorkloadHandler {
	return &WorkloadHandler{decoder: admission.NewDecoder(scheme)}
}

// Handle copies the annotations, and checks them as the pods will be
// checked, so that a mistake is denied on the workload rather than on every
// pod it makes.
func (h *WorkloadHandler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, outcome := h.handle(req)
	kind := req.Kind.Kind
	if _, ok := workloads[schema.GroupKind{Group: req.Kind.Group, Kind: kind}]; !ok {
		kind = "other" // a fixed set of label values, whatever the request says
	}
	observe(kind, outcome, start)
	return resp
}

func (h *WorkloadHandler) handle(req admission.Request) (admission.Response, string) {
	w, ok := workloads[schema.GroupKind{Group: req.Kind.Group, Kind: req.Kind.Kind}]
	if !ok || (req.Operation != admissionv1.Create && (req.Operation != admissionv1.Update || !w.onUpdate)) {
		return admission.Allowed(""), outcomeSkipped
	}
	obj := w.new()
	if err := h.decoder.Decode(req, obj); err != nil {
		return admission.Errored(http.StatusBadRequest, err), outcomeError
	}
	original, err := json.Marshal(obj)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), outcomeError
	}
	template := w.template(obj)
	changed := Propagate(obj.GetAnnotations(), template)
	// The template holds the workload's own klock.io/ annotations now, too.
	warnings := wrap.UnknownKeys(template.Annotations)
	if !changed {
		return admission.Allowed("").WithWarnings(warnings...), outcomeSkipped
	}
	if _, wants := template.Annotations[wrap.AnnotationLease]; wants {
		_, errs := wrap.Flags(template.Annotations)
		errs = append(errs, wrap.CheckGate(template.Annotations)...)
		if len(errs) > 0 {
			return admission.Denied(fmt.Sprintf("%s (on %s %s, whose pods would all be denied)", errs.ToAggregate(), req.Kind.Kind, req.Name)), outcomeDenied
		}
	}
	if d, ok := obj.(*appsv1.Deployment); ok {
		warnings = append(warnings, RolloutWarnings(d)...)
	}
	mutated, err := json.Marshal(obj)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), outcomeError
	}
	return admission.PatchResponseFromRaw(original, mutated).WithWarnings(warnings...), outcomeWrapped
}

// RolloutWarnings warns about a wrapped Deployment whose rolling update
// cannot progress: a new pod waits for the lock an old pod holds, so it
// never becomes ready, and with no unavailability allowed the old pod is
// never stopped.
func RolloutWarnings(d *appsv1.Deployment) []string {
	if _, wants := d.Spec.Template.Annotations[wrap.AnnotationLease]; !wants || d.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType {
		return nil
	}
	replicas := 1
	if d.Spec.Replicas != nil {
		replicas = int(*d.Spec.Replicas)
	}
	maxUnavailable := intstr.FromString("25%") // the API's default
	if ru := d.Spec.Strategy.RollingUpdate; ru != nil && ru.MaxUnavailable != nil {
		maxUnavailable = *ru.MaxUnavailable
	}
	unavailable, err := intstr.GetScaledValueFromIntOrPercent(&maxUnavailable, replicas, false)
	if err != nil || unavailable > 0 {
		return nil
	}
	pod := &corev1.Pod{ObjectMeta: d.Spec.Template.ObjectMeta, Spec: d.Spec.Template.Spec}
	i, ferr := wrap.Target(pod)
	if ferr != nil || pod.Spec.Containers[i].ReadinessProbe == nil {
		return nil
	}
	return []string{fmt.Sprintf("Deployment %s allows no unavailable replica during a rolling update, and container %q has a readinessProbe: a new pod waits for the lock an old pod holds, never becomes ready, and the rollout stalls; set spec.strategy.type: Recreate, or spec.strategy.rollingUpdate.maxUnavailable to 1 or more", d.Name, pod.Spec.Containers[i].Name)}
}
