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
		// namespaces the values name, made before the dry run.
		namespaces []string
	}{
		{
			name: "default: TLS from cert-manager with a CA of the chart's",
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				cert := find(objs, "Certificate", "klock-webhook")
				if cert == nil || find(objs, "Issuer", "klock-selfsigned") == nil {
					t.Fatal("no Certificate and Issuer")
				}
				dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
				if want := []string{"klock-webhook.klock-system.svc", "klock-webhook.klock-system.svc.cluster.local"}; !slices.Equal(dns, want) {
					t.Errorf("dnsNames %v, want %v", dns, want)
				}
				checkCAChain(t, objs, "klock-system")
				webhooks, _, _ := unstructured.NestedSlice(find(objs, "MutatingWebhookConfiguration", "klock").Object, "webhooks")
				for _, w := range webhooks {
					sel, _, _ := unstructured.NestedMap(w.(map[string]any), "namespaceSelector")
					want := map[string]any{"matchExpressions": []any{
						map[string]any{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": []any{"kube-system", "kube-node-lease", "kube-public", "klock-system"}},
						map[string]any{"key": "klock.io/exclude", "operator": "NotIn", "values": []any{"true"}},
					}}
					if diff := cmp.Diff(want, sel); diff != "" {
						t.Errorf("%s: namespaceSelector (-want +got):\n%s", w.(map[string]any)["name"], diff)
					}
				}
				if rule := rbacRule(find(objs, "ClusterRole", "klock-webhook"), "", "secrets"); rule == nil || !slices.Equal(rule["verbs"].([]any), []any{"get"}) {
					t.Errorf("the webhook may not get pull secrets: %v", rule)
				}
				spec, _, _ := unstructured.NestedMap(find(objs, "Deployment", "klock-webhook").Object, "spec", "template", "spec")
				webhook := spec["containers"].([]any)[0].(map[string]any)
				if args, _, _ := unstructured.NestedStringSlice(webhook, "args"); !slices.Contains(args, "--read-pull-secrets=true") {
					t.Errorf("args %q", args)
				}
				if sleep, _, _ := unstructured.NestedInt64(webhook, "lifecycle", "preStop", "sleep", "seconds"); sleep != 5 || spec["terminationGracePeriodSeconds"] != int64(35) {
					t.Errorf("preStop sleep %d, terminationGracePeriodSeconds %v: want 5 and 35", sleep, spec["terminationGracePeriodSeconds"])
				}
				if _, ok := spec["priorityClassName"]; ok {
					t.Errorf("priorityClassName %v by default", spec["priorityClassName"])
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
				if args, _, _ := unstructured.NestedStringSlice(webhook, "args"); !slices.Contains(args, "--gating=opt-in") || slices.ContainsFunc(args, isGatingNamespaces) {
					t.Errorf("args %q: want --gating=opt-in, and no --gating-namespaces (every namespace)", args)
				}
				checkGateRBAC(t, objs, nil)
			},
		},
		{
			name:   "gating off: none of the gate controller's RBAC",
			values: map[string]any{"gating": "off"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				for _, o := range objs {
					if strings.HasPrefix(o.GetName(), "klock-webhook-gate") {
						t.Errorf("%s %s/%s with gating off", o.GetKind(), o.GetNamespace(), o.GetName())
					}
					if o.GetKind() != "ClusterRole" && o.GetKind() != "Role" {
						continue
					}
					if rule := rbacRule(o, "", "pods"); rule != nil && slices.Contains(rule["verbs"].([]any), "patch") {
						t.Errorf("%s %s may patch pods with gating off", o.GetKind(), o.GetName())
					}
				}
				if args := webhookArgs(t, objs); !slices.Contains(args, "--gating=off") {
					t.Errorf("args %q lack --gating=off", args)
				}
			},
		},
		{
			name:       "gating by default, in some namespaces only",
			values:     map[string]any{"gating": "default", "gatingNamespaces": []any{"team-a", "team-b"}},
			namespaces: []string{"team-a", "team-b"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				checkGateRBAC(t, objs, []string{"team-a", "team-b"})
				args := webhookArgs(t, objs)
				if !slices.Contains(args, "--gating=default") {
					t.Errorf("args %q lack --gating=default", args)
				}
				// The webhook's informer and gating stay where its RBAC is.
				if got, want := slices.DeleteFunc(slices.Clone(args), func(a string) bool { return !isGatingNamespaces(a) }), []string{"--gating-namespaces=team-a", "--gating-namespaces=team-b"}; !slices.Equal(got, want) {
					t.Errorf("args %q, want %q", got, want)
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
				if find(objs, "Issuer", "klock-ca") != nil || find(objs, "Certificate", "klock-webhook-ca") != nil {
					t.Error("a CA of the chart's besides the user's issuer")
				}
				// The serving Secret's ca.crt: the user's issuer's CA.
				if got := find(objs, "MutatingWebhookConfiguration", "klock").GetAnnotations()["cert-manager.io/inject-ca-from"]; got != "klock-system/klock-webhook" {
					t.Errorf("inject-ca-from %q, want the serving Certificate", got)
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
				args := webhookArgs(t, objs)
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
					t.Fatal("PDB or NetworkPolicy not as asked")
				}
				// From anywhere, as before webhookFrom and metricsFrom.
				ingress, _, _ := unstructured.NestedSlice(find(objs, "NetworkPolicy", "klock-webhook").Object, "spec", "ingress")
				for _, rule := range ingress {
					if from, ok := rule.(map[string]any)["from"]; ok {
						t.Errorf("ingress from %v, want from anywhere", from)
					}
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
				if find(objs, "ClusterRole", "klock-webhook-lease-access") == nil || find(objs, "ClusterRoleBinding", "klock-webhook-lease-access") == nil ||
					find(objs, "ClusterRoleBinding", "klock-webhook-lease-access-watch") == nil {
					t.Error("no RBAC for the Lease access controller")
				}
				for _, o := range objs {
					if o.GetKind() == "RoleBinding" && o.GetName() == "klock-webhook-lease-access" {
						t.Errorf("a RoleBinding in %s with no leaseAccessNamespaces", o.GetNamespace())
					}
				}
				if find(objs, "CustomResourceDefinition", "clusterlockpolicies.klock.io") != nil {
					t.Error("the CRD is rendered with crds.enabled false")
				}
				if args := webhookArgs(t, objs); !slices.Contains(args, "--lease-access=policy") {
					t.Errorf("args %q", args)
				}
			},
		},
		{
			name:       "lease access in some namespaces only",
			values:     map[string]any{"leaseAccess": "all", "leaseAccessNamespaces": []any{"team-a", "team-b"}},
			namespaces: []string{"team-a", "team-b"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if find(objs, "ClusterRoleBinding", "klock-webhook-lease-access") != nil {
					t.Error("the Lease verbs bound in every namespace")
				}
				var bound []string
				for _, o := range objs {
					if o.GetKind() == "RoleBinding" && o.GetName() == "klock-webhook-lease-access" {
						bound = append(bound, o.GetNamespace())
						if ref, _, _ := unstructured.NestedString(o.Object, "roleRef", "name"); ref != "klock-webhook-lease-access" {
							t.Errorf("RoleBinding in %s binds %s", o.GetNamespace(), ref)
						}
					}
				}
				if !slices.Equal(bound, []string{"team-a", "team-b"}) {
					t.Errorf("bound in %v, want team-a and team-b", bound)
				}
				// Its informers still watch Roles everywhere.
				if find(objs, "ClusterRoleBinding", "klock-webhook-lease-access-watch") == nil {
					t.Error("no ClusterRoleBinding klock-webhook-lease-access-watch")
				}
				if rbacRule(find(objs, "ClusterRole", "klock-webhook-lease-access-watch"), "coordination.k8s.io", "leases") != nil {
					t.Error("Lease verbs in every namespace")
				}
			},
		},
		{
			name:   "no pull secrets",
			values: map[string]any{"webhook": map[string]any{"readPullSecrets": false}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				role := find(objs, "ClusterRole", "klock-webhook")
				if rule := rbacRule(role, "", "secrets"); rule != nil {
					t.Errorf("the webhook may read Secrets: %v", rule)
				}
				if rule := rbacRule(role, "", "serviceaccounts"); rule != nil {
					t.Errorf("the webhook may read ServiceAccounts: %v", rule)
				}
				if args := webhookArgs(t, objs); !slices.Contains(args, "--read-pull-secrets=false") {
					t.Errorf("args %q", args)
				}
			},
		},
		{
			name: "a NetworkPolicy that lets in only the API server and the monitoring namespace",
			values: map[string]any{"networkPolicy": map[string]any{
				"enabled":     true,
				"webhookFrom": []any{map[string]any{"ipBlock": map[string]any{"cidr": "10.0.0.10/32"}}},
				"metricsFrom": []any{map[string]any{"namespaceSelector": map[string]any{"matchLabels": map[string]any{"kubernetes.io/metadata.name": "monitoring"}}}},
			}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				ingress, _, _ := unstructured.NestedSlice(find(objs, "NetworkPolicy", "klock-webhook").Object, "spec", "ingress")
				want := []any{
					map[string]any{
						"ports": []any{map[string]any{"port": int64(9443), "protocol": "TCP"}},
						"from":  []any{map[string]any{"ipBlock": map[string]any{"cidr": "10.0.0.10/32"}}},
					},
					map[string]any{
						"ports": []any{map[string]any{"port": int64(8080), "protocol": "TCP"}},
						"from":  []any{map[string]any{"namespaceSelector": map[string]any{"matchLabels": map[string]any{"kubernetes.io/metadata.name": "monitoring"}}}},
					},
				}
				if diff := cmp.Diff(want, ingress); diff != "" {
					t.Errorf("ingress (-want +got):\n%s", diff)
				}
			},
		},
		{
			name:   "a priority class, no preStop sleep, one replica without a PDB",
			values: map[string]any{"webhook": map[string]any{"priorityClassName": "system-cluster-critical", "preStopSeconds": 0, "replicas": 1, "podDisruptionBudget": map[string]any{"enabled": false}}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				spec, _, _ := unstructured.NestedMap(find(objs, "Deployment", "klock-webhook").Object, "spec", "template", "spec")
				if spec["priorityClassName"] != "system-cluster-critical" || spec["terminationGracePeriodSeconds"] != int64(30) {
					t.Errorf("priorityClassName %v, terminationGracePeriodSeconds %v", spec["priorityClassName"], spec["terminationGracePeriodSeconds"])
				}
				if lifecycle, ok := spec["containers"].([]any)[0].(map[string]any)["lifecycle"]; ok {
					t.Errorf("lifecycle %v with preStopSeconds 0", lifecycle)
				}
			},
		},
		{
			name:   "a PDB that leaves one of three replicas to evict",
			values: map[string]any{"webhook": map[string]any{"replicas": 3, "podDisruptionBudget": map[string]any{"minAvailable": "50%"}}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if find(objs, "PodDisruptionBudget", "klock-webhook") == nil {
					t.Error("no PDB")
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
			namespaces := []*unstructured.Unstructured{decode(t, []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"klock-system","labels":{"pod-security.kubernetes.io/enforce":"restricted"}}}`))}
			for _, ns := range tc.namespaces {
				namespaces = append(namespaces, decode(t, []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"`+ns+`"}}`)))
			}
			dryRunApply(t, append(namespaces, objs...))
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
		{name: "an unknown gating", values: map[string]any{"gating": "always"}, want: "at '/gating': value must be one of 'off', 'opt-in', 'default'"},
		{name: "a gating namespace named twice", values: map[string]any{"gatingNamespaces": []any{"a", "a"}}, want: "at '/gatingNamespaces'"},
		{name: "a gating namespace that is no namespace name", values: map[string]any{"gatingNamespaces": []any{"team-a", "Team_B"}}, want: "at '/gatingNamespaces/1'"},
		{name: "an empty gating namespace", values: map[string]any{"gatingNamespaces": []any{""}}, want: "at '/gatingNamespaces/0'"},
		{name: "lease access without policies", values: map[string]any{"leaseAccess": "all", "policies": map[string]any{"enabled": false}}, want: "leaseAccess needs policies.enabled"},
		{name: "secret mode without a secret", values: map[string]any{"tls": map[string]any{"mode": "secret"}}, want: "is required with tls.mode=secret"},
		{name: "one replica that its PDB keeps", values: map[string]any{"webhook": map[string]any{"replicas": 1}},
			want: "webhook.podDisruptionBudget.minAvailable 1 with webhook.replicas 1 lets no node drain evict a replica"},
		{name: "a PDB that keeps every replica", values: map[string]any{"webhook": map[string]any{"replicas": 2, "podDisruptionBudget": map[string]any{"minAvailable": "100%"}}},
			want: "webhook.podDisruptionBudget.minAvailable 100% with webhook.replicas 2 lets no node drain evict a replica"},
		{name: "a PDB of more than the replicas", values: map[string]any{"webhook": map[string]any{"replicas": 2, "podDisruptionBudget": map[string]any{"minAvailable": 3}}},
			want: "raise webhook.replicas or lower minAvailable"},
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
	// One difference: the chart names the release namespace, which it
	// cannot label, where deploy/ labels its namespace klock.io/exclude.
	chartHooks := webhooks(chart)
	for _, w := range chartHooks {
		names := w.(map[string]any)["namespaceSelector"].(map[string]any)["matchExpressions"].([]any)[0].(map[string]any)
		values := names["values"].([]any)
		if values[len(values)-1] != "klock-system" {
			t.Fatalf("the chart's excluded namespaces %v do not end with its own", values)
		}
		names["values"] = values[:len(values)-1]
	}
	if diff := cmp.Diff(webhooks(kustomized), chartHooks); diff != "" {
		t.Errorf("webhooks (-kustomize,+chart):\n%s", diff)
	}
}

// checkCAChain checks cert-manager's CA chain: a self-signed Issuer signs
// a CA Certificate, whose CA Issuer signs the serving Certificate, and
// cainjector injects the CA Certificate, which renewals of the serving
// certificate leave as it was.
func checkCAChain(t *testing.T, objs []*unstructured.Unstructured, ns string) {
	t.Helper()
	str := func(o *unstructured.Unstructured, path ...string) string {
		if o == nil {
			return "<missing>"
		}
		s, _, _ := unstructured.NestedString(o.Object, path...)
		return s
	}
	selfSigned := find(objs, "Issuer", "klock-selfsigned")
	if _, ok, _ := unstructured.NestedMap(selfSigned.Object, "spec", "selfSigned"); !ok {
		t.Error("Issuer klock-selfsigned is not selfSigned")
	}
	ca := find(objs, "Certificate", "klock-webhook-ca")
	if ca == nil {
		t.Fatal("no CA Certificate klock-webhook-ca")
	}
	if isCA, _, _ := unstructured.NestedBool(ca.Object, "spec", "isCA"); !isCA || str(ca, "spec", "issuerRef", "name") != "klock-selfsigned" ||
		str(ca, "spec", "secretName") != "klock-webhook-ca" || str(ca, "spec", "privateKey", "rotationPolicy") != "Never" || str(ca, "spec", "duration") != "43800h" {
		t.Errorf("CA Certificate spec %v", ca.Object["spec"])
	}
	if got := str(find(objs, "Issuer", "klock-ca"), "spec", "ca", "secretName"); got != "klock-webhook-ca" {
		t.Errorf("CA Issuer klock-ca signs with %q, want the CA Certificate's Secret", got)
	}
	serving := find(objs, "Certificate", "klock-webhook")
	if got := str(serving, "spec", "issuerRef", "name"); got != "klock-ca" || str(serving, "spec", "issuerRef", "kind") != "Issuer" {
		t.Errorf("the serving Certificate is signed by %s, want Issuer klock-ca", got)
	}
	if isCA, _, _ := unstructured.NestedBool(serving.Object, "spec", "isCA"); isCA {
		t.Error("the serving Certificate is a CA")
	}
	if got := find(objs, "MutatingWebhookConfiguration", "klock").GetAnnotations()["cert-manager.io/inject-ca-from"]; got != ns+"/klock-webhook-ca" {
		t.Errorf("inject-ca-from %q, want the CA Certificate %s/klock-webhook-ca", got, ns)
	}
}

// checkGateRBAC checks the gate controller's RBAC: its ClusterRoles with
// exactly what it needs, klock-webhook-gate to act and
// klock-webhook-gate-watch for its informer, each bound in namespaces by a
// RoleBinding each, or everywhere by a ClusterRoleBinding when namespaces
// is empty: the informer lists pods nowhere the controller does not act.
func checkGateRBAC(t *testing.T, objs []*unstructured.Unstructured, namespaces []string) {
	t.Helper()
	for name, want := range map[string][]any{
		"klock-webhook-gate": {
			map[string]any{"apiGroups": []any{""}, "resources": []any{"pods"}, "verbs": []any{"get", "patch"}},
			map[string]any{"apiGroups": []any{"coordination.k8s.io"}, "resources": []any{"leases"}, "verbs": []any{"get", "list", "watch", "create", "update", "delete"}},
			map[string]any{"apiGroups": []any{"", "events.k8s.io"}, "resources": []any{"events"}, "verbs": []any{"create", "patch"}},
		},
		"klock-webhook-gate-watch": {
			map[string]any{"apiGroups": []any{""}, "resources": []any{"pods"}, "verbs": []any{"list", "watch"}},
		},
	} {
		role := find(objs, "ClusterRole", name)
		if role == nil {
			t.Fatalf("no ClusterRole %s", name)
		}
		if diff := cmp.Diff(want, role.Object["rules"]); diff != "" {
			t.Errorf("%s rules (-want +got):\n%s", name, diff)
		}
		var bound []string
		for _, o := range objs {
			if o.GetName() != name || (o.GetKind() != "RoleBinding" && o.GetKind() != "ClusterRoleBinding") {
				continue
			}
			bound = append(bound, o.GetNamespace())
			ref, _, _ := unstructured.NestedStringMap(o.Object, "roleRef")
			subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
			if ref["kind"] != "ClusterRole" || ref["name"] != name || len(subjects) != 1 ||
				!cmp.Equal(subjects[0], map[string]any{"kind": "ServiceAccount", "name": "klock-webhook", "namespace": "klock-system"}) {
				t.Errorf("%s %s/%s binds %v to %v", o.GetKind(), o.GetNamespace(), name, ref, subjects)
			}
			if (o.GetKind() == "ClusterRoleBinding") != (len(namespaces) == 0) {
				t.Errorf("a %s %s with gatingNamespaces %v", o.GetKind(), name, namespaces)
			}
		}
		want := namespaces
		if len(want) == 0 {
			want = []string{""} // the ClusterRoleBinding's
		}
		if !slices.Equal(bound, want) {
			t.Errorf("%s bound in %q, want %q", name, bound, want)
		}
	}
}

// isGatingNamespaces reports whether arg is a --gating-namespaces flag.
func isGatingNamespaces(arg string) bool { return strings.HasPrefix(arg, "--gating-namespaces") }

// rbacRule is role's rule for resource in group, or nil.
func rbacRule(role *unstructured.Unstructured, group, resource string) map[string]any {
	if role == nil {
		return nil
	}
	rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
	for _, r := range rules {
		rule := r.(map[string]any)
		groups, _, _ := unstructured.NestedStringSlice(rule, "apiGroups")
		resources, _, _ := unstructured.NestedStringSlice(rule, "resources")
		if slices.Contains(groups, group) && slices.Contains(resources, resource) {
			return rule
		}
	}
	return nil
}

// webhook.insecureRegistries becomes one --insecure-registry each, none by
// default; an entry that is not host[:port] fails the schema.
func TestHelmChartInsecureRegistries(t *testing.T) {
	args := func(values map[string]any) []string {
		t.Helper()
		objs, err := helmTemplate(t, "klock-system", values)
		if err != nil {
			t.Fatal(err)
		}
		d := find(objs, "Deployment", "klock-webhook")
		if d == nil {
			t.Fatal("no Deployment klock-webhook")
		}
		containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
		a, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
		var got []string
		for _, arg := range a {
			if strings.HasPrefix(arg, "--insecure-registry") {
				got = append(got, arg)
			}
		}
		return got
	}
	if got := args(nil); len(got) != 0 {
		t.Errorf("by default: %q, want none", got)
	}
	got := args(map[string]any{"webhook": map[string]any{"insecureRegistries": []any{"10.244.0.1", "registry.local:5000", "[fd00::1]:5000"}}})
	if want := []string{"--insecure-registry=10.244.0.1", "--insecure-registry=registry.local:5000", "--insecure-registry=[fd00::1]:5000"}; !slices.Equal(got, want) {
		t.Errorf("args %q, want %q", got, want)
	}
	for _, bad := range []string{"http://10.0.0.5:5000", "10.0.0.5:5000/v2", ""} {
		if _, err := helmTemplate(t, "klock-system", map[string]any{"webhook": map[string]any{"insecureRegistries": []any{bad}}}); err == nil {
			t.Errorf("insecureRegistries [%q]: rendered, want a schema error", bad)
		}
	}
}
