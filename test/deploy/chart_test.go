package deploy

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/loader"
	"helm.sh/helm/v4/pkg/engine"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/klock-io/klock/test/framework"
)

var chartDir = filepath.Join(framework.RepoRoot(), "charts", "klock")

// helmTemplate renders the chart as `helm template klock charts/klock -n ns`
// would, with values, checked against values.schema.json.
func helmTemplate(t *testing.T, ns string, values map[string]any) ([]*unstructured.Unstructured, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	caps := common.DefaultCapabilities.Copy()
	caps.KubeVersion = common.KubeVersion{Version: "v1.37.1", Major: "1", Minor: "37"}
	vals, err := util.ToRenderValuesWithSchemaValidation(ch, values, common.ReleaseOptions{Name: "klock", Namespace: ns, IsInstall: true}, caps, false)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		return nil, err
	}
	var names []string
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	var objs []*unstructured.Unstructured
	for _, name := range names {
		if strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		for doc := range strings.SplitSeq(files[name], "\n---") {
			data, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			if string(data) == "null" {
				continue // an empty document
			}
			objs = append(objs, decode(t, data))
		}
	}
	return objs, nil
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

func TestHelmLint(t *testing.T) {
	lint := action.NewLint()
	lint.Strict = true
	for _, values := range []map[string]any{
		nil,
		{"tls": map[string]any{"mode": "secret", "secret": map[string]any{"name": "tls", "caBundle": "Q0E="}}},
		{"tls": map[string]any{"mode": "selfManaged"}},
	} {
		if res := lint.Run([]string{chartDir}, values); len(res.Errors) > 0 {
			t.Errorf("helm lint --strict (values %v): %v", values, res.Errors)
		}
	}
}

func TestHelmChart(t *testing.T) {
	ns := "klock-system"
	for _, tc := range []struct {
		name   string
		values map[string]any
		check  func(t *testing.T, objs []*unstructured.Unstructured)
		// renderOnly: a kind whose CRD this API server does not have.
		renderOnly bool
	}{
		{
			name: "default: TLS from cert-manager with a self-signed issuer",
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				cert := find(objs, "Certificate", "klock-webhook")
				if cert == nil || find(objs, "Issuer", "klock-selfsigned") == nil {
					t.Fatal("no Certificate and Issuer")
				}
				dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
				if want := []string{"klock-webhook.klock-system.svc", "klock-webhook.klock-system.svc.cluster.local"}; !slices.Equal(dns, want) {
					t.Errorf("dnsNames %v, want %v", dns, want)
				}
				mwc := find(objs, "MutatingWebhookConfiguration", "klock")
				if got := mwc.GetAnnotations()["cert-manager.io/inject-ca-from"]; got != "klock-system/klock-webhook" {
					t.Errorf("inject-ca-from %q", got)
				}
				image, _, _ := unstructured.NestedSlice(find(objs, "Deployment", "klock-webhook").Object, "spec", "template", "spec", "containers")
				if got := image[0].(map[string]any)["image"]; got != "ghcr.io/klock-io/klock:0.1.0" {
					t.Errorf("image %v, want the appVersion's", got)
				}
				crd := find(objs, "CustomResourceDefinition", "clusterlockpolicies.klock.io")
				if crd == nil || crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
					t.Error("want the ClusterLockPolicy CRD, kept on uninstall")
				}
				if find(objs, "ClusterRole", "klock-webhook-lease-access") != nil {
					t.Error("Lease access RBAC without leaseAccess")
				}
			},
		},
		{
			name:   "cert-manager with the user's issuer",
			values: map[string]any{"tls": map[string]any{"certManager": map[string]any{"issuerRef": map[string]any{"kind": "ClusterIssuer", "name": "corp-ca"}}}, "clusterDomain": "corp.local"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if find(objs, "Issuer", "klock-selfsigned") != nil {
					t.Error("a self-signed Issuer besides the user's")
				}
				cert := find(objs, "Certificate", "klock-webhook")
				ref, _, _ := unstructured.NestedStringMap(cert.Object, "spec", "issuerRef")
				dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
				if ref["kind"] != "ClusterIssuer" || ref["name"] != "corp-ca" || !slices.Contains(dns, "klock-webhook.klock-system.svc.corp.local") {
					t.Errorf("issuerRef %v, dnsNames %v", ref, dns)
				}
			},
		},
		{
			name:   "a Secret of the user's",
			values: map[string]any{"tls": map[string]any{"mode": "secret", "secret": map[string]any{"name": "my-tls", "caBundle": "Q0E="}}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if find(objs, "Certificate", "klock-webhook") != nil {
					t.Error("a Certificate in secret mode")
				}
				mwc := find(objs, "MutatingWebhookConfiguration", "klock")
				hooks, _, _ := unstructured.NestedSlice(mwc.Object, "webhooks")
				for _, h := range hooks {
					if ca, _, _ := unstructured.NestedString(h.(map[string]any), "clientConfig", "caBundle"); ca != "Q0E=" {
						t.Errorf("caBundle %q", ca)
					}
				}
				vols, _, _ := unstructured.NestedSlice(find(objs, "Deployment", "klock-webhook").Object, "spec", "template", "spec", "volumes")
				if got, _, _ := unstructured.NestedString(vols[0].(map[string]any), "secret", "secretName"); got != "my-tls" {
					t.Errorf("the Deployment mounts %q", got)
				}
			},
		},
		{
			name:   "self-managed TLS",
			values: map[string]any{"tls": map[string]any{"mode": "selfManaged"}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if find(objs, "Certificate", "klock-webhook") != nil || find(objs, "Secret", "klock-webhook-tls") == nil ||
					find(objs, "Role", "klock-webhook-certs") == nil || find(objs, "Role", "klock-webhook-leader-election") == nil {
					t.Error("want the Secret and the rotation's RBAC, and no Certificate")
				}
				if got := find(objs, "MutatingWebhookConfiguration", "klock").GetAnnotations(); len(got) != 0 {
					t.Errorf("annotations %v: nothing should inject the CA but the webhook", got)
				}
				containers, _, _ := unstructured.NestedSlice(find(objs, "Deployment", "klock-webhook").Object, "spec", "template", "spec", "containers")
				args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
				for _, want := range []string{"--self-managed-tls", "--tls-secret=klock-system/klock-webhook-tls",
					"--dns-names=klock-webhook.klock-system.svc,klock-webhook.klock-system.svc.cluster.local", "--webhook-configuration=klock", "--leader-elect"} {
					if !slices.Contains(args, want) {
						t.Errorf("args %q lack %q", args, want)
					}
				}
			},
		},
		{
			name:   "more excluded namespaces, no PDB, a NetworkPolicy",
			values: map[string]any{"webhook": map[string]any{"excludedNamespaces": []any{"kube-system", "monitoring"}, "podDisruptionBudget": map[string]any{"enabled": false}}, "networkPolicy": map[string]any{"enabled": true}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if find(objs, "PodDisruptionBudget", "klock-webhook") != nil || find(objs, "NetworkPolicy", "klock-webhook") == nil {
					t.Error("PDB or NetworkPolicy not as asked")
				}
				hooks, _, _ := unstructured.NestedSlice(find(objs, "MutatingWebhookConfiguration", "klock").Object, "webhooks")
				exprs, _, _ := unstructured.NestedSlice(hooks[0].(map[string]any), "namespaceSelector", "matchExpressions")
				if got := exprs[0].(map[string]any)["values"]; !cmp.Equal(got, []any{"kube-system", "monitoring", "klock-system"}) {
					t.Errorf("excluded namespaces %v", got)
				}
			},
		},
		{
			name:   "lease access for policies, and no CRD",
			values: map[string]any{"leaseAccess": "policy", "crds": map[string]any{"enabled": false}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if find(objs, "ClusterRole", "klock-webhook-lease-access") == nil || find(objs, "ClusterRoleBinding", "klock-webhook-lease-access") == nil {
					t.Error("no RBAC for the Lease access controller")
				}
				if find(objs, "CustomResourceDefinition", "clusterlockpolicies.klock.io") != nil {
					t.Error("the CRD is rendered with crds.enabled false")
				}
				containers, _, _ := unstructured.NestedSlice(find(objs, "Deployment", "klock-webhook").Object, "spec", "template", "spec", "containers")
				if args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args"); !slices.Contains(args, "--lease-access=policy") {
					t.Errorf("args %q", args)
				}
			},
		},
		{
			name:       "a ServiceMonitor (Prometheus Operator's CRD is not installed here: rendered only)",
			values:     map[string]any{"metrics": map[string]any{"serviceMonitor": map[string]any{"enabled": true, "interval": "15s"}}},
			renderOnly: true,
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				sm := find(objs, "ServiceMonitor", "klock-webhook")
				if sm == nil {
					t.Fatal("no ServiceMonitor")
				}
				eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
				if ep := eps[0].(map[string]any); ep["port"] != "metrics" || ep["interval"] != "15s" {
					t.Errorf("endpoint %v", ep)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := helmTemplate(t, ns, tc.values)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, objs)
			if tc.renderOnly {
				return
			}
			// helm install --create-namespace; the label as deploy/ sets it.
			namespace := decode(t, []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"klock-system","labels":{"pod-security.kubernetes.io/enforce":"restricted"}}}`))
			dryRunApply(t, append([]*unstructured.Unstructured{namespace}, objs...))
		})
	}

	for _, tc := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{name: "an unknown TLS mode", values: map[string]any{"tls": map[string]any{"mode": "magic"}}, want: "at '/tls/mode': value must be one of 'certManager', 'secret'"},
		{name: "no replica", values: map[string]any{"webhook": map[string]any{"replicas": 0}}, want: "at '/webhook/replicas'"},
		{name: "a misspelt value", values: map[string]any{"webhok": map[string]any{}}, want: "webhok"},
		{name: "an unknown lease access", values: map[string]any{"leaseAccess": "some"}, want: "at '/leaseAccess': value must be one of 'off', 'policy', 'all'"},
		{name: "lease access without policies", values: map[string]any{"leaseAccess": "all", "policies": map[string]any{"enabled": false}}, want: "leaseAccess needs policies.enabled"},
		{name: "secret mode without a secret", values: map[string]any{"tls": map[string]any{"mode": "secret"}}, want: "is required with tls.mode=secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := helmTemplate(t, ns, tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// The chart's default and deploy/default make the same objects, and the
// same webhook configuration, so that users of either get one product.
func TestHelmChartMatchesKustomize(t *testing.T) {
	chart, err := helmTemplate(t, "klock-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	kustomized := Kustomize(t, "deploy/default")
	key := func(o *unstructured.Unstructured) string {
		return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
	}
	var fromChart, fromKustomize []string
	for _, o := range chart {
		fromChart = append(fromChart, key(o))
	}
	for _, o := range kustomized {
		if o.GetKind() != "Namespace" { // helm install --create-namespace makes it
			fromKustomize = append(fromKustomize, key(o))
		}
	}
	slices.Sort(fromChart)
	slices.Sort(fromKustomize)
	if diff := cmp.Diff(fromKustomize, fromChart); diff != "" {
		t.Errorf("objects (-kustomize,+chart):\n%s", diff)
	}
	webhooks := func(objs []*unstructured.Unstructured) []any {
		o := find(objs, "MutatingWebhookConfiguration", "klock")
		if o == nil {
			t.Fatal("no MutatingWebhookConfiguration klock")
		}
		hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
		return hooks
	}
	if diff := cmp.Diff(webhooks(kustomized), webhooks(chart)); diff != "" {
		t.Errorf("webhooks (-kustomize,+chart):\n%s", diff)
	}
}
