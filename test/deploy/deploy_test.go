// Package deploy tests the manifests users install: rendered as users
// render them, and checked by the real API server.
package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

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
		"PodDisruptionBudget", "MutatingWebhookConfiguration", "Issuer", "Certificate"} {
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
	rules := func(objs []*unstructured.Unstructured) any {
		role := find(objs, "ClusterRole", "klock-webhook-lease-access")
		if role == nil {
			t.Fatal("no ClusterRole klock-webhook-lease-access")
		}
		return role.Object["rules"]
	}
	if diff := cmp.Diff(rules(kustomized), rules(chart)); diff != "" {
		t.Errorf("rules (-kustomize +chart):\n%s", diff)
	}
	dryRunApply(t, kustomized)
}
