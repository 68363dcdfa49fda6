// Package deploy tests the manifests users install: rendered as users
// render them, and checked by the real API server.
package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/klock-io/klock/test/framework"
)

var cp *framework.ControlPlane

func TestMain(m *testing.M) {
	os.Exit(func() int {
		crds, err := framework.CertManagerCRDs()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if cp, err = framework.StartWith(framework.Options{CRDs: []string{crds}}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer cp.Stop()
		return m.Run()
	}())
}

// Kustomize builds a kustomization (relative to the repository) as
// `kubectl apply -k` would.
func Kustomize(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(framework.RepoRoot(), dir)
	}
	resmap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range resmap.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, decode(t, data))
	}
	return objs
}

// decode reads an object from JSON the way client-go does, with int64
// numbers, so that objects from kustomize and from helm compare equal.
func decode(t *testing.T, data []byte) *unstructured.Unstructured {
	t.Helper()
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	return obj
}

// dryRunApply fails the test for every object the API server rejects, and
// for every warning it gives.
func dryRunApply(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, err := range cp.DryRunApply(context.Background(), objs, func(w string) { t.Errorf("API server warning: %s", w) }) {
		t.Error(err)
	}
}

func TestKustomizeDefaultIsValid(t *testing.T) {
	objs := Kustomize(t, "deploy/default")
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
	}
	for _, want := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
		"PodDisruptionBudget", "MutatingWebhookConfiguration", "Issuer", "Certificate", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		if kinds[want] == 0 {
			t.Errorf("deploy/default renders no %s (it renders %v)", want, kinds)
		}
	}
	dryRunApply(t, objs)
}

// The lease-access component gives the webhook what the chart's
// leaseAccess does.
func TestKustomizeLeaseAccessMatchesChart(t *testing.T) {
	dir := t.TempDir()
	deploy, err := filepath.Rel(dir, filepath.Join(framework.RepoRoot(), "deploy")) // kustomize takes no absolute paths
	if err != nil {
		t.Fatal(err)
	}
	overlay := "resources:\n- " + deploy + "/default\ncomponents:\n- " + deploy + "/components/lease-access\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		t.Fatal(err)
	}
	kustomized := Kustomize(t, dir)
	chart, err := helmTemplate(t, "klock-system", map[string]any{"leaseAccess": "policy"})
	if err != nil {
		t.Fatal(err)
	}
	for _, objs := range [][]*unstructured.Unstructured{kustomized, chart} {
		containers, _, _ := unstructured.NestedSlice(find(objs, "Deployment", "klock-webhook").Object, "spec", "template", "spec", "containers")
		if args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args"); !slices.Contains(args, "--lease-access=policy") {
			t.Errorf("args %q lack --lease-access=policy", args)
		}
	}
	for _, name := range []string{"klock-webhook-lease-access", "klock-webhook-lease-access-watch"} {
		rules := func(objs []*unstructured.Unstructured) any {
			role := find(objs, "ClusterRole", name)
			if role == nil {
				t.Fatalf("no ClusterRole %s", name)
			}
			return role.Object["rules"]
		}
		if diff := cmp.Diff(rules(kustomized), rules(chart)); diff != "" {
			t.Errorf("%s rules (-kustomize +chart):\n%s", name, diff)
		}
		for _, objs := range [][]*unstructured.Unstructured{kustomized, chart} {
			if find(objs, "ClusterRoleBinding", name) == nil {
				t.Errorf("no ClusterRoleBinding %s", name)
			}
		}
	}
	dryRunApply(t, kustomized)
}

// overlay writes a kustomization of deploy/default with components and
// more into a new directory, and returns it.
func overlay(t *testing.T, components []string, more string) string {
	t.Helper()
	dir := t.TempDir()
	deploy, err := filepath.Rel(dir, filepath.Join(framework.RepoRoot(), "deploy")) // kustomize takes no absolute paths
	if err != nil {
		t.Fatal(err)
	}
	k := "resources:\n- " + deploy + "/default\ncomponents:\n"
	for _, c := range components {
		k += "- " + deploy + "/components/" + c + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k+more), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func webhookArgs(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(find(objs, "Deployment", "klock-webhook").Object, "spec", "template", "spec", "containers")
	args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
	return args
}

// The no-pull-secrets component does what the chart's
// webhook.readPullSecrets=false does.
func TestKustomizeNoPullSecretsMatchesChart(t *testing.T) {
	kustomized := Kustomize(t, overlay(t, []string{"no-pull-secrets"}, ""))
	chart, err := helmTemplate(t, "klock-system", map[string]any{"webhook": map[string]any{"readPullSecrets": false}})
	if err != nil {
		t.Fatal(err)
	}
	for _, objs := range [][]*unstructured.Unstructured{kustomized, chart} {
		if args := webhookArgs(t, objs); !slices.Contains(args, "--read-pull-secrets=false") {
			t.Errorf("args %q lack --read-pull-secrets=false", args)
		}
		if rule := rbacRule(find(objs, "ClusterRole", "klock-webhook"), "", "secrets"); rule != nil {
			t.Errorf("the webhook may read Secrets: %v", rule)
		}
	}
	rules := func(objs []*unstructured.Unstructured) any {
		return find(objs, "ClusterRole", "klock-webhook").Object["rules"]
	}
	if diff := cmp.Diff(rules(kustomized), rules(chart)); diff != "" {
		t.Errorf("rules (-kustomize +chart):\n%s", diff)
	}
	if rule := rbacRule(find(Kustomize(t, "deploy/default"), "ClusterRole", "klock-webhook"), "", "secrets"); rule == nil {
		t.Error("deploy/default reads no pull secrets")
	}
	dryRunApply(t, kustomized)
}

// deploy/default gates pods that opt in, as the chart's default does, and
// the no-gating component does what the chart's gating=off does.
func TestKustomizeGatingMatchesChart(t *testing.T) {
	chart, err := helmTemplate(t, "klock-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	kustomized := Kustomize(t, "deploy/default")
	if args := webhookArgs(t, kustomized); !slices.Contains(args, "--gating=opt-in") {
		t.Errorf("deploy/default: args %q lack --gating=opt-in", args)
	}
	checkGateRBAC(t, kustomized, nil)
	for _, name := range []string{"klock-webhook-gate", "klock-webhook-gate-watch"} {
		for _, kind := range []string{"ClusterRole", "ClusterRoleBinding"} {
			k, c := find(kustomized, kind, name), find(chart, kind, name)
			if k == nil || c == nil {
				t.Fatalf("%s %s: deploy/default %v, the chart %v", kind, name, k != nil, c != nil)
			}
			for _, field := range []string{"rules", "roleRef", "subjects"} {
				if diff := cmp.Diff(k.Object[field], c.Object[field]); diff != "" {
					t.Errorf("%s %s %s (-kustomize +chart):\n%s", kind, name, field, diff)
				}
			}
		}
	}

	off := Kustomize(t, overlay(t, []string{"no-gating"}, ""))
	chartOff, err := helmTemplate(t, "klock-system", map[string]any{"gating": "off"})
	if err != nil {
		t.Fatal(err)
	}
	for name, objs := range map[string][]*unstructured.Unstructured{"components/no-gating": off, "the chart with gating off": chartOff} {
		args := webhookArgs(t, objs)
		if !slices.Contains(args, "--gating=off") || slices.Contains(args, "--gating=opt-in") {
			t.Errorf("%s: args %q, want --gating=off alone", name, args)
		}
		for _, o := range objs {
			if strings.HasPrefix(o.GetName(), "klock-webhook-gate") {
				t.Errorf("%s: %s %s with gating off", name, o.GetKind(), o.GetName())
			}
		}
	}
	dryRunApply(t, off)
}

// deploy/ runs the image of the chart's appVersion, as the chart does,
// both as the webhook and as what wrapped pods copy klock from.
func TestKustomizeImageIsTheChartsAppVersion(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &meta); err != nil || meta.AppVersion == "" {
		t.Fatalf("Chart.yaml: appVersion %q, %v", meta.AppVersion, err)
	}
	want := "ghcr.io/klock-io/klock:" + meta.AppVersion
	chart, err := helmTemplate(t, "klock-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, objs := range map[string][]*unstructured.Unstructured{"deploy/default": Kustomize(t, "deploy/default"), "the chart": chart} {
		containers, _, _ := unstructured.NestedSlice(find(objs, "Deployment", "klock-webhook").Object, "spec", "template", "spec", "containers")
		c := containers[0].(map[string]any)
		if c["image"] != want || c["imagePullPolicy"] != "IfNotPresent" {
			t.Errorf("%s runs %v (%v), want %s (IfNotPresent)", name, c["image"], c["imagePullPolicy"], want)
		}
		if args := webhookArgs(t, objs); !slices.Contains(args, "--klock-image="+want) || !slices.Contains(args, "--klock-image-pull-policy=IfNotPresent") {
			t.Errorf("%s: args %q, want --klock-image=%s", name, args, want)
		}
	}
}

// kustomize edit set namespace moves deploy/default whole: the webhook
// leaves its namespace out by the label it carries, and the certificate
// names the Service where it is.
func TestKustomizeSetNamespace(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(framework.RepoRoot(), "deploy", "default", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	deploy, err := filepath.Rel(dir, filepath.Join(framework.RepoRoot(), "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	// A copy of deploy/default after `kustomize edit set namespace`.
	k := strings.ReplaceAll(string(data), "../", deploy+"/") + "namespace: klock-moved\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	objs := Kustomize(t, dir)
	for _, o := range objs {
		if ns := o.GetNamespace(); ns != "" && ns != "klock-moved" {
			t.Errorf("%s %s left in %s", o.GetKind(), o.GetName(), ns)
		}
	}
	moved := find(objs, "Namespace", "klock-moved")
	if moved == nil {
		t.Fatal("no Namespace klock-moved")
	}
	dns, _, _ := unstructured.NestedStringSlice(find(objs, "Certificate", "klock-webhook").Object, "spec", "dnsNames")
	if want := []string{"klock-webhook.klock-moved.svc", "klock-webhook.klock-moved.svc.cluster.local"}; !slices.Equal(dns, want) {
		t.Errorf("dnsNames %v, want %v", dns, want)
	}
	mwc := find(objs, "MutatingWebhookConfiguration", "klock")
	if got := mwc.GetAnnotations()["cert-manager.io/inject-ca-from"]; got != "klock-moved/klock-webhook-ca" {
		t.Errorf("inject-ca-from %q", got)
	}
	nsLabels := func(name string, extra map[string]string) labels.Set {
		return labels.Merge(labels.Set{"kubernetes.io/metadata.name": name}, extra)
	}
	hooks, _, _ := unstructured.NestedSlice(mwc.Object, "webhooks")
	for _, h := range hooks {
		var w admissionregistrationv1.MutatingWebhook
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(h.(map[string]any), &w); err != nil {
			t.Fatal(err)
		}
		sel, err := metav1.LabelSelectorAsSelector(w.NamespaceSelector)
		if err != nil {
			t.Fatal(err)
		}
		if w.ClientConfig.Service.Namespace != "klock-moved" {
			t.Errorf("%s calls the Service in %s", w.Name, w.ClientConfig.Service.Namespace)
		}
		for ns, set := range map[string]labels.Set{
			"klock-moved":     nsLabels("klock-moved", moved.GetLabels()),
			"kube-system":     nsLabels("kube-system", nil),
			"kube-node-lease": nsLabels("kube-node-lease", nil),
			"kube-public":     nsLabels("kube-public", nil),
		} {
			if sel.Matches(set) {
				t.Errorf("%s sends the pods of %s to the webhook", w.Name, ns)
			}
		}
		if !sel.Matches(nsLabels("apps", nil)) {
			t.Errorf("%s leaves out namespace apps", w.Name)
		}
	}
	dryRunApply(t, objs)
}
