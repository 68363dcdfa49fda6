package webhook

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/klock-io/klock/webhook/wrap"
)

func TestPropagate(t *testing.T) {
	for _, tc := range []struct {
		name        string
		workload    map[string]string
		template    map[string]string
		want        map[string]string
		wantChanged bool
	}{
		{name: "nothing of klock's", workload: map[string]string{"a": "b"}, want: nil},
		{name: "klock's annotations only are copied",
			workload: map[string]string{wrap.AnnotationLease: "x", wrap.AnnotationWait: "5s", "other.io/y": "z"},
			want:     map[string]string{wrap.AnnotationLease: "x", wrap.AnnotationWait: "5s"}, wantChanged: true},
		{name: "the workload's value wins, the template's others stay",
			workload: map[string]string{wrap.AnnotationLease: "new"},
			template: map[string]string{wrap.AnnotationLease: "old", wrap.AnnotationSignal: "INT", "app": "v"},
			want:     map[string]string{wrap.AnnotationLease: "new", wrap.AnnotationSignal: "INT", "app": "v"}, wantChanged: true},
		{name: "already in place", workload: map[string]string{wrap.AnnotationLease: "x"}, template: map[string]string{wrap.AnnotationLease: "x"},
			want: map[string]string{wrap.AnnotationLease: "x"}},
		{name: "the webhook's own status is not copied", workload: map[string]string{wrap.AnnotationInjected: "app"}, want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := &corev1.PodTemplateSpec{}
			tmpl.Annotations = tc.template
			if got := Propagate(tc.workload, tmpl); got != tc.wantChanged {
				t.Errorf("changed = %v, want %v", got, tc.wantChanged)
			}
			if diff := cmp.Diff(tc.want, tmpl.Annotations); diff != "" {
				t.Errorf("template annotations (-want,+got):\n%s", diff)
			}
		})
	}
}

func TestRolloutWarnings(t *testing.T) {
	deployment := func(replicas int32, maxUnavailable *intstr.IntOrString, recreate, probe bool) *appsv1.Deployment {
		d := &appsv1.Deployment{}
		d.Name = "web"
		d.Spec.Replicas = &replicas
		d.Spec.Template.Annotations = map[string]string{wrap.AnnotationLease: "web"}
		c := corev1.Container{Name: "app"}
		if probe {
			c.ReadinessProbe = &corev1.Probe{}
		}
		d.Spec.Template.Spec.Containers = []corev1.Container{c}
		if recreate {
			d.Spec.Strategy.Type = appsv1.RecreateDeploymentStrategyType
		} else if maxUnavailable != nil {
			d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxUnavailable: maxUnavailable}
		}
		return d
	}
	zero, one := intstr.FromInt32(0), intstr.FromInt32(1)
	for _, tc := range []struct {
		name string
		d    *appsv1.Deployment
		warn bool
	}{
		{name: "maxUnavailable 0 with a readiness probe", d: deployment(3, &zero, false, true), warn: true},
		{name: "the default 25% of 2 replicas rounds down to 0", d: deployment(2, nil, false, true), warn: true},
		{name: "the default 25% of 4 replicas is 1", d: deployment(4, nil, false, true)},
		{name: "maxUnavailable 1", d: deployment(3, &one, false, true)},
		{name: "no readiness probe", d: deployment(3, &zero, false, false)},
		{name: "Recreate", d: deployment(3, nil, true, true)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := len(RolloutWarnings(tc.d)) > 0; got != tc.warn {
				t.Errorf("warned = %v, want %v", got, tc.warn)
			}
		})
	}
}

// A workload whose gate annotations every one of its pods would be denied
// for is denied itself, naming them; good ones are copied like any other.
func TestWorkloadHandlerGate(t *testing.T) {
	h := NewWorkloadHandler(Scheme())
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		want        string // in the denial; empty: allowed
	}{
		{name: "good values", annotations: map[string]string{wrap.AnnotationLease: "x", wrap.AnnotationGate: "true", wrap.AnnotationStartTimeout: "2m"}},
		{name: "a gate that is not a boolean", annotations: map[string]string{wrap.AnnotationLease: "x", wrap.AnnotationGate: "sometimes"},
			want: `metadata.annotations[klock.io/gate]: Invalid value: "sometimes": must be "true" or "false" (on Deployment web, whose pods would all be denied)`},
		{name: "a start timeout over a day", annotations: map[string]string{wrap.AnnotationLease: "x", wrap.AnnotationStartTimeout: "2d"},
			want: `metadata.annotations[klock.io/start-timeout]: Invalid value: "2d"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"}, ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", Annotations: tc.annotations}}
			d.Spec.Template.Spec.Containers = []corev1.Container{{Name: "app", Image: "busybox"}}
			raw, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			resp := h.Handle(context.Background(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
				Operation: admissionv1.Create, Namespace: "ns", Name: "web",
				Kind:   metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"},
				Object: runtime.RawExtension{Raw: raw},
			}})
			if tc.want == "" {
				if !resp.Allowed || len(resp.Patches) == 0 {
					t.Errorf("allowed %v, %d patches: %+v", resp.Allowed, len(resp.Patches), resp.Result)
				}
				return
			}
			if resp.Allowed || !strings.Contains(resp.Result.Message, tc.want) {
				t.Errorf("allowed %v, result %+v; want a denial containing %q", resp.Allowed, resp.Result, tc.want)
			}
		})
	}
}
