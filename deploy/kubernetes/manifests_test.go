// Package kubernetes holds no code: its test checks the manifests in this
// directory by decoding them strictly into the Kubernetes API types (an
// unknown or misspelt field fails), asserts the settings the day-2
// applier depends on, runs the DaemonSet's loop, and feeds the example
// ConfigMap to the real applier.
package kubernetes

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm"
)

const namespace = "bellbuild-system"

// strict decodes a one-object manifest into v as the API server does:
// field names are case sensitive, and unknown fields and duplicate keys
// are errors. (sigs.k8s.io/yaml's UnmarshalStrict alone is not enough: it
// goes through encoding/json, which accepts "hostPid" for hostPID.)
func strict(b []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(j, v)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func decode(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := strict(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func TestStrictDecodeRejectsTypos(t *testing.T) {
	// The check itself must be able to fail.
	for _, tc := range []struct{ name, doc, msg string }{
		{"case", "spec:\n  template:\n    spec:\n      hostPid: true\n", `unknown field "spec.template.spec.hostPid"`},
		{"unknown", "spec:\n  template:\n    spec:\n      hostPIDs: true\n", `unknown field "spec.template.spec.hostPIDs"`},
		{"duplicate", "metadata:\n  name: a\n  name: b\n", `key "name" already set in map`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ds appsv1.DaemonSet
			err := strict([]byte("apiVersion: apps/v1\nkind: DaemonSet\n"+tc.doc), &ds)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %v, want one with %q", err, tc.msg)
			}
		})
	}
}

func TestManifests(t *testing.T) {
	var (
		ns  corev1.Namespace
		sa  corev1.ServiceAccount
		cm  corev1.ConfigMap
		ds  appsv1.DaemonSet
		all = []struct {
			file       string
			obj        any
			kind, apiV string
			meta       func() (string, string)
		}{
			{"namespace.yaml", &ns, "Namespace", "v1", func() (string, string) { return ns.Name, ns.Namespace }},
			{"serviceaccount.yaml", &sa, "ServiceAccount", "v1", func() (string, string) { return sa.Name, sa.Namespace }},
			{"configmap.yaml", &cm, "ConfigMap", "v1", func() (string, string) { return cm.Name, cm.Namespace }},
			{"daemonset.yaml", &ds, "DaemonSet", "apps/v1", func() (string, string) { return ds.Name, ds.Namespace }},
		}
	)
	for _, m := range all {
		decode(t, m.file, m.obj)
	}
	type id struct{ Kind, APIVersion, Name, Namespace string }
	var got, want []id
	for _, m := range all {
		var tm struct{ Kind, APIVersion string }
		b, _ := os.ReadFile(m.file)
		if err := yaml.Unmarshal(b, &tm); err != nil {
			t.Fatal(err)
		}
		name, nsName := m.meta()
		got = append(got, id{tm.Kind, tm.APIVersion, name, nsName})
	}
	want = []id{
		{"Namespace", "v1", namespace, ""},
		{"ServiceAccount", "v1", "bellbuild-apply", namespace},
		{"ConfigMap", "v1", "bellbuild-config", namespace},
		{"DaemonSet", "apps/v1", "bellbuild-apply", namespace},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("objects (-want +got):\n%s", d)
	}

	spec := ds.Spec.Template.Spec
	if d := cmp.Diff(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels); d != "" {
		t.Errorf("the selector does not match the pod labels:\n%s", d)
	}
	if !spec.HostPID || !spec.HostNetwork {
		t.Errorf("hostPID=%t hostNetwork=%t: the applier must see the host's processes and network", spec.HostPID, spec.HostNetwork)
	}
	if spec.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, want %q", spec.ServiceAccountName, sa.Name)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v: want one that tolerates every taint", spec.Tolerations)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("the container is not privileged")
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("mount %s uses undeclared volume %q", m.MountPath, m.Name)
		}
	}
	host, ok := mounts["/host"]
	if !ok {
		t.Fatal("nothing mounted at /host")
	}
	if hp := volumes[host.Name].HostPath; hp == nil || hp.Path != "/" {
		t.Errorf("/host is %+v, want the host's / (hostPath)", volumes[host.Name].VolumeSource)
	}
	if host.ReadOnly {
		t.Error("/host is read-only: the applier writes the host's files")
	}
	conf, ok := mounts["/etc/bellbuild/config"]
	if !ok {
		t.Fatal("nothing mounted at /etc/bellbuild/config")
	}
	if cmv := volumes[conf.Name].ConfigMap; cmv == nil || cmv.Name != cm.Name {
		t.Errorf("/etc/bellbuild/config is %+v, want ConfigMap %s", volumes[conf.Name].VolumeSource, cm.Name)
	}
	script := strings.Join(c.Command, " ")
	for _, want := range []string{"bellbuild apply", `--config "$config"`, `--root "${HOST_ROOT:-/host}"`, "--live", "/etc/bellbuild/config/node.json"} {
		if !strings.Contains(script, want) {
			t.Errorf("the command lacks %q:\n%s", want, script)
		}
	}

	// The example configuration is a node in the schema the applier reads.
	var n nodeconf.Node
	dec := json.NewDecoder(strings.NewReader(cm.Data["node.json"]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil {
		t.Errorf("configmap.yaml node.json: %v", err)
	}
	if n.Conf.Sysctl["vm.swappiness"] != "10" {
		t.Errorf("example sysctl = %v", n.Conf.Sysctl)
	}
}

// loopScript returns the DaemonSet container's shell script.
func loopScript(t *testing.T) string {
	t.Helper()
	var ds appsv1.DaemonSet
	decode(t, "daemonset.yaml", &ds)
	cmd := ds.Spec.Template.Spec.Containers[0].Command
	if len(cmd) != 3 || cmd[0] != "/bin/sh" || cmd[1] != "-c" {
		t.Fatalf("command %q: want /bin/sh -c SCRIPT", cmd)
	}
	return cmd[2]
}

// TestLoopRerunsOnChange runs the DaemonSet's loop with a stand-in for
// bellbuild that records each run: one run at start, none while the
// ConfigMap file is unchanged, one more once it changes (as the kubelet
// swaps it), and retries while a run fails.
func TestLoopRerunsOnChange(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "runs.log")
	fail := filepath.Join(dir, "fail")
	stub := "#!/bin/sh\necho \"$* :: $(cat \"$3\")\" >> " + log + "\n[ -e " + fail + " ] && exit 1\nexit 0\n"
	if err := os.WriteFile(filepath.Join(bin, "bellbuild"), []byte(stub), 0o755); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "node.json")
	if err := os.WriteFile(config, []byte("v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", loopScript(t))
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "CONFIG="+config, "HOST_ROOT="+dir+"/host",
		"POLL_SECONDS=0.1", "RESYNC_SECONDS=3600")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	runs := func() []string {
		b, err := os.ReadFile(log)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	waitRuns := func(n int) []string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if r := runs(); len(r) >= n {
				return r
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("waited for %d runs, got %q; stderr:\n%s", n, runs(), stderr.String())
		return nil
	}
	args := "apply --config " + config + " --root " + dir + "/host --live :: "
	waitRuns(1)
	time.Sleep(time.Second) // ten polls: an unchanged file is not reapplied
	if r := runs(); len(r) != 1 || r[0] != args+"v1" {
		t.Fatalf("runs before any change: %q", r)
	}
	// A new ConfigMap version arrives, and the first run of it fails.
	if err := os.WriteFile(fail, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := config + ".new"
	if err := os.WriteFile(tmp, []byte("v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, config); err != nil {
		t.Fatal(err)
	}
	waitRuns(3) // retried while failing
	if err := os.Remove(fail); err != nil {
		t.Fatal(err)
	}
	r := waitRuns(4)
	time.Sleep(time.Second)
	r2 := runs()
	if len(r2) != len(r) {
		t.Errorf("the loop kept running after a successful apply: %q", r2)
	}
	for _, run := range r2[1:] {
		if run != args+"v2" {
			t.Errorf("run %q, want %q", run, args+"v2")
		}
	}
}

// TestConfigMapAccepted feeds the example node.json to the real applier,
// planning against an empty root: it must validate.
func TestConfigMapAccepted(t *testing.T) {
	var cm corev1.ConfigMap
	decode(t, "configmap.yaml", &cm)
	dir := t.TempDir()
	config := filepath.Join(dir, "node.json")
	if err := os.WriteFile(config, []byte(cm.Data["node.json"]), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testvm.Binary(t), "apply", "--config", config, "--root", root, "--offline", "--plan").CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 2) {
		t.Fatalf("bellbuild apply --plan rejects the example: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "limits") {
		t.Errorf("the plan does not mention the example's limits:\n%s", out)
	}
}

// TestKustomization checks that kustomization.yaml lists every manifest
// (and nothing else) and names the DaemonSet's image.
func TestKustomization(t *testing.T) {
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name    string `json:"name"`
			NewName string `json:"newName,omitempty"`
			NewTag  string `json:"newTag,omitempty"`
		} `json:"images"`
	}
	decode(t, "kustomization.yaml", &k)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("apiVersion %q kind %q", k.APIVersion, k.Kind)
	}
	manifests, _ := filepath.Glob("*.yaml")
	var want []string
	for _, m := range manifests {
		if m != "kustomization.yaml" {
			want = append(want, m)
		}
	}
	got := append([]string(nil), k.Resources...)
	sort.Strings(got)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("resources (-manifests in the directory +listed):\n%s", d)
	}
	var ds appsv1.DaemonSet
	decode(t, "daemonset.yaml", &ds)
	image, _, _ := strings.Cut(ds.Spec.Template.Spec.Containers[0].Image, ":")
	if len(k.Images) != 1 || k.Images[0].Name != image {
		t.Errorf("images %+v do not name the DaemonSet's image %q", k.Images, image)
	}
}
