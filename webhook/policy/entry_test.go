package policy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/webhook/internal/builders"
)

func TestPolicyWebhook(t *testing.T) {
	const podsPath = "/mutate-pods" // the pods entry's path in deploy/
	pods := admissionregistrationv1.MutatingWebhook{
		Name:              PodsWebhook,
		ClientConfig:      admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{Name: "klock-webhook", Path: ptr.To(podsPath)}},
		NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system"}}}},
		MatchConditions:   []admissionregistrationv1.MatchCondition{{Name: "annotated", Expression: "true"}},
	}
	p := builders.MakePolicy("nightly").Namespaces(map[string]string{"team": "a"}).Pods(map[string]string{"tier": "batch"}).
		Kinds(klockv1alpha1.CronJob, klockv1alpha1.Job, klockv1alpha1.Deployment).AllowSkip().Obj()
	p.Generation = 3
	got := PolicyWebhook(&pods, p)
	want := admissionregistrationv1.MutatingWebhook{
		Name:         "nightly.policies.klock.io",
		ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{Name: "klock-webhook", Path: ptr.To("/mutate-pods/policies/nightly/3")}},
		NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system"}},
			{Key: "team", Operator: metav1.LabelSelectorOpIn, Values: []string{"a"}},
		}},
		ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"batch"}},
		}},
		MatchConditions: []admissionregistrationv1.MatchCondition{
			{Name: "not-skipped", Expression: "!has(object.metadata.annotations) || !('klock.io/skip' in object.metadata.annotations) || object.metadata.annotations['klock.io/skip'] != 'true'"},
			{Name: "workload-kinds", Expression: "has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(r, has(r.controller) && r.controller && r.kind in ['Job', 'ReplicaSet'])"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("policy webhook (-want +got):\n%s", diff)
	}
	if pods.Name != PodsWebhook || len(pods.MatchConditions) != 1 || *pods.ClientConfig.Service.Path != podsPath {
		t.Fatal("the pods entry was changed")
	}
}
