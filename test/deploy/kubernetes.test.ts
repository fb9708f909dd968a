/**
 * deploy/kubernetes: every manifest against the Kubernetes object schemas of the pinned
 * `kubernetes-models` package (generated from the Kubernetes v1.36 OpenAPI document), the two
 * variants composed as kustomize composes them, and the facts that make them a drop-in for
 * lk-jwt-service, checked against the Dockerfile and the agent's own configuration loader.
 * No cluster and no image are involved: what the kubelet and the image would do is derived from
 * the manifests and the Dockerfile.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';

import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import type { IConfigMap } from 'kubernetes-models/v1/ConfigMap';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IPersistentVolumeClaim } from 'kubernetes-models/v1/PersistentVolumeClaim';
import type { IPodSpec } from 'kubernetes-models/v1/PodSpec';
import type { ISecret } from 'kubernetes-models/v1/Secret';
import type { IService } from 'kubernetes-models/v1/Service';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';

import { agentEnvHook } from '../../src/config/agent-env.js';
import { type AgentConfig, agentSettings } from '../../src/config/agent.js';
import { settingsOf } from '../../src/config/define.js';
import { loadConfig } from '../../src/config/load.js';
import { finalStage } from '../support/dockerfile.js';

const ROOT = join(import.meta.dirname, '../..');
const DEPLOY = join(ROOT, 'deploy/kubernetes');
const VARIANTS = ['single', 'cluster'] as const;
type Variant = (typeof VARIANTS)[number];

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  [field: string]: unknown;
}
interface Loaded {
  file: string;
  object: Manifest;
}

// ---------------------------------------------------------------------------------------------
// Reading manifests as Kubernetes does

/** YAML 1.1, as sigs.k8s.io/yaml reads it (0440 is octal there, a decimal 440 in YAML 1.2). */
function readManifests(path: string): Manifest[] {
  const docs = parseAllDocuments(readFileSync(path, 'utf8'), { version: '1.1', uniqueKeys: true });
  if (!Array.isArray(docs)) throw new Error(`${path}: no YAML documents`);
  const out: Manifest[] = [];
  for (const doc of docs) {
    const problems = [...doc.errors, ...doc.warnings];
    if (problems.length > 0) throw new Error(`${path}: ${problems.map((p) => p.message).join('; ')}`);
    const value = doc.toJS() as unknown;
    if (value !== null && value !== undefined) out.push(value as Manifest);
  }
  return out;
}

function yamlFilesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => /\.ya?ml$/.test(f))
    .map((f) => join(dir, f))
    .sort();
}

/**
 * kustomize's composition for kustomizations that only list `resources` (files, or directories
 * holding a kustomization): the concatenation of those resources. Anything else (patches,
 * generators, name prefixes) would change the objects, so it is refused here rather than ignored.
 */
function compose(dir: string, used: Set<string>): Loaded[] {
  const path = join(dir, 'kustomization.yaml');
  used.add(path);
  const [k] = readManifests(path) as unknown as Array<Record<string, unknown>>;
  if (k?.apiVersion !== 'kustomize.config.k8s.io/v1beta1' || k.kind !== 'Kustomization') {
    throw new Error(`${path}: not a kustomize.config.k8s.io/v1beta1 Kustomization`);
  }
  const extra = Object.keys(k).filter((key) => !['apiVersion', 'kind', 'resources'].includes(key));
  if (extra.length > 0) throw new Error(`${path}: ${extra.join(', ')} not supported by this test's composition`);
  const out: Loaded[] = [];
  for (const resource of k.resources as string[]) {
    const target = join(dir, resource);
    if (statSync(target).isDirectory()) {
      out.push(...compose(target, used));
    } else {
      used.add(target);
      out.push(...readManifests(target).map((object) => ({ file: target, object })));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Schema checks with kubernetes-models

/** The model class of an object, found by its apiVersion and kind (an unknown pair fails here). */
async function modelFor(m: Manifest): Promise<new (data: unknown) => { validate(): void }> {
  const path = `kubernetes-models/${m.apiVersion}/${m.kind}`;
  const mod = (await import(/* @vite-ignore */ path)) as Record<string, unknown>;
  const cls = mod[m.kind];
  if (typeof cls !== 'function') throw new Error(`no model for ${m.apiVersion} ${m.kind}`);
  return cls as new (data: unknown) => { validate(): void };
}

/**
 * The package's JSON schemas allow unknown fields (the OpenAPI document does not forbid them),
 * while `kubectl apply` refuses them (strict field validation, its default on current clusters;
 * with validation off they are silently dropped), so a misspelt field would pass the schema. The
 * package's TypeScript interfaces, generated from the same document, do know the fields: each
 * object is type-checked as an object literal, whose excess-property check reaches every depth.
 */
function unknownFieldErrors(objects: Loaded[]): string[] {
  const virtual = join(ROOT, 'test/deploy/__manifests__.ts');
  const lines: string[] = [];
  const owners: Array<{ line: number; label: string }> = [];
  objects.forEach(({ object }, i) => {
    const from = `kubernetes-models/${object.apiVersion}/${object.kind}`;
    lines.push(`import type { I${object.kind} as T${i} } from '${from}';`);
  });
  objects.forEach(({ file, object }, i) => {
    owners.push({ line: lines.length, label: `${relative(ROOT, file)} (${object.kind} ${object.metadata.name})` });
    lines.push(...`export const m${i}: T${i} = ${JSON.stringify(object, null, 2)};`.split('\n'));
  });
  const text = lines.join('\n');
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  host.getSourceFile = (name, lang, ...rest) =>
    name === virtual ? ts.createSourceFile(name, text, lang) : getSourceFile(name, lang, ...rest);
  host.fileExists = (name) => name === virtual || fileExists(name);
  const program = ts.createProgram([virtual], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const message = ts.flattenDiagnosticMessageText(d.messageText, ' ');
    if (d.file?.fileName !== virtual || d.start === undefined) return message;
    const line = d.file.getLineAndCharacterOfPosition(d.start).line;
    const owner = owners.findLast((o) => o.line <= line);
    return `${owner?.label ?? '(imports)'}: ${message}`;
  });
}

// ---------------------------------------------------------------------------------------------
// What the image and the kubelet contribute

const POD_NAME = 'lastwill-agent-5d8c7b9f4-x2x7q';

/** The container's environment as the kubelet builds it: image, then envFrom, then env. */
function containerEnv(
  container: IContainer,
  objects: Manifest[],
  imageEnv: Record<string, string>,
): { env: Record<string, string>; fromManifest: string[] } {
  const env: Record<string, string> = { ...imageEnv };
  const fromManifest: string[] = [];
  const set = (name: string, value: string) => {
    env[name] = value;
    fromManifest.push(name);
  };
  for (const source of container.envFrom ?? []) {
    const ref = source.configMapRef?.name;
    const configMap = named<IConfigMap>(objects, 'ConfigMap', ref);
    if (!configMap) throw new Error(`envFrom names ConfigMap ${ref}, which is not in the variant`);
    for (const [name, value] of Object.entries(configMap.data ?? {})) set(name, value);
  }
  for (const e of container.env ?? []) {
    const { secretKeyRef, fieldRef } = e.valueFrom ?? {};
    if (e.value !== undefined) {
      set(e.name, e.value);
    } else if (secretKeyRef) {
      set(e.name, secretValue(objects, secretKeyRef.name, secretKeyRef.key));
    } else if (fieldRef?.fieldPath === 'metadata.name') {
      set(e.name, POD_NAME);
    } else {
      throw new Error(`env ${e.name}: a source this test does not model`);
    }
  }
  return { env, fromManifest };
}

function named<T>(objects: Manifest[], kind: string, name: string | undefined): T | undefined {
  return objects.find((o) => o.kind === kind && o.metadata.name === name) as T | undefined;
}

/** Secrets come from the variant, or from the example that shows what the operator must create. */
function secretValue(objects: Manifest[], name: string | undefined, key: string): string {
  const value = named<ISecret>(objects, 'Secret', name)?.stringData?.[key];
  if (value === undefined) throw new Error(`Secret ${name} has no key ${key}`);
  return value;
}

/** The files each secret volume puts into the container, by their path there. */
function secretFiles(pod: IPodSpec, container: IContainer, objects: Manifest[]): Map<string, string> {
  const files = new Map<string, string>();
  for (const mount of container.volumeMounts ?? []) {
    const source = pod.volumes?.find((v) => v.name === mount.name)?.secret;
    if (source === undefined) continue;
    if (source.items !== undefined) throw new Error(`volume ${mount.name}: secret items are not modelled here`);
    const secret = named<ISecret>(objects, 'Secret', source.secretName);
    for (const [key, value] of Object.entries(secret?.stringData ?? {})) {
      files.set(`${mount.mountPath}/${key}`, value);
    }
  }
  return files;
}

// ---------------------------------------------------------------------------------------------

const image = finalStage();
const packageJson = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
const settings = settingsOf(agentSettings);

/** Every variable name the agent's loader looks at, found by running it on an empty environment. */
function namesTheAgentReads(): Set<string> {
  const read = new Set<string>();
  const env = new Proxy({} as Record<string, string | undefined>, {
    get: (_, name) => {
      if (typeof name === 'string') read.add(name);
      return undefined;
    },
  });
  loadConfig(agentSettings, { env, envHook: agentEnvHook });
  return read;
}

const allFiles = yamlFilesUnder(DEPLOY);
const examples = allFiles.filter((f) => f.endsWith('.example.yaml'));
const used = new Set<string>();
const variants = Object.fromEntries(
  VARIANTS.map((v) => [v, compose(join(DEPLOY, 'overlays', v), used)]),
) as Record<Variant, Loaded[]>;
const exampleObjects = examples.flatMap((file) => readManifests(file).map((object) => ({ file, object })));

const scratch = mkdtempSync(join(tmpdir(), 'lastwill-k8s-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('deploy/kubernetes manifests', () => {
  it('are all valid Kubernetes objects by the v1.36 schemas of kubernetes-models', async () => {
    const objects = allFiles
      .filter((f) => basename(f) !== 'kustomization.yaml')
      .flatMap((file) => readManifests(file).map((object) => ({ file, object })));
    expect(new Set(objects.map((l) => l.object.kind))).toEqual(
      new Set([
        'ConfigMap',
        'Deployment',
        'PersistentVolumeClaim',
        'PodDisruptionBudget',
        'Secret',
        'Service',
        'ServiceAccount',
      ]),
    );
    // The package also keeps the schemas of APIs removed since (policy/v1beta1, say), so those
    // would validate here and fail on a current cluster: only stable v1 APIs are used.
    expect(objects.map((l) => l.object.apiVersion).filter((v) => !/^([a-z0-9.]+\/)?v1$/.test(v))).toEqual([]);
    const failures: string[] = [];
    for (const { file, object } of objects) {
      try {
        new (await modelFor(object))(object).validate();
      } catch (err) {
        const where = `${relative(ROOT, file)} (${object.kind} ${object.metadata?.name})`;
        failures.push(`${where}: ${(err as Error).message}`);
      }
    }
    expect(failures.join('\n')).toBe('');
  });

  it('have no field Kubernetes does not know (kubectl apply is strict)', () => {
    const objects = allFiles
      .filter((f) => basename(f) !== 'kustomization.yaml')
      .flatMap((file) => readManifests(file).map((object) => ({ file, object })));
    expect(unknownFieldErrors(objects).join('\n')).toBe('');
  });

  it('are each applied by a variant, or are examples of what the operator creates', () => {
    const orphans = allFiles.filter((f) => !used.has(f) && !examples.includes(f)).map((f) => relative(ROOT, f));
    expect(orphans).toEqual([]);
    // The examples hold placeholders, so no kustomization may apply one.
    expect(examples.filter((f) => used.has(f))).toEqual([]);
  });
});

describe.each(VARIANTS)('the %s variant', (variant) => {
  const objects = variants[variant].map((l) => l.object);
  const everything = [...objects, ...exampleObjects.map((l) => l.object)];
  const find = <T>(kind: string) => objects.filter((o) => o.kind === kind) as unknown as T[];
  const [deployment] = find<IDeployment>('Deployment');
  const pod = deployment!.spec!.template.spec!;
  const container = pod.containers[0]!;
  const [service] = find<IService>('Service');
  const podLabels = deployment!.spec!.template.metadata!.labels!;
  const selects = (selector: Record<string, string> | undefined) =>
    selector !== undefined &&
    Object.keys(selector).length > 0 &&
    Object.entries(selector).every(([k, v]) => podLabels[k] === v);

  let config: AgentConfig;
  let composed: { env: Record<string, string>; fromManifest: string[] };
  beforeAll(() => {
    composed = containerEnv(container, everything, image.env);
    // The secret files the container would see, as real files for the loader to read.
    const files = secretFiles(pod, container, everything);
    const env = { ...composed.env };
    for (const [name, value] of Object.entries(env)) {
      const content = files.get(value);
      if (content === undefined) continue;
      const path = join(scratch, `${variant}-${name}`);
      writeFileSync(path, `${content}\n`);
      env[name] = path;
    }
    config = loadConfig(agentSettings, { env, envHook: agentEnvHook });
  });

  it('has exactly one Deployment with one container, and unique names per kind', () => {
    expect(find('Deployment')).toHaveLength(1);
    expect(pod.containers).toHaveLength(1);
    const keys = objects.map((o) => `${o.kind}/${o.metadata.name}`);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it('runs the image built from this repository as the agent', () => {
    expect(container.image).toBe(`lastwill:${packageJson.version}`);
    expect(image.entrypoint).toEqual(['node', 'dist/cli.js']);
    expect(container.command).toBeUndefined();
    expect(container.args).toEqual(['agent']);
  });

  it('listens where lk-jwt-service does: port 8080 in the container and on the Service', () => {
    expect(container.ports).toEqual([{ name: 'http', containerPort: 8080, protocol: 'TCP' }]);
    expect(Number(config.bind.split(':').pop())).toBe(8080);
    expect(service!.spec!.ports).toEqual([{ name: 'http', port: 8080, targetPort: 'http', protocol: 'TCP' }]);
    expect(selects(service!.spec!.selector)).toBe(true);
  });

  it('probes liveness on /healthz and readiness on /readyz', () => {
    expect(container.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 'http' });
    expect(container.startupProbe?.httpGet).toEqual({ path: '/healthz', port: 'http' });
    expect(container.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 'http' });
  });

  it("runs as the image's non-root user, with no privileges and a read-only root", () => {
    expect(image.user).toBe('node');
    expect(pod.securityContext).toMatchObject({
      runAsNonRoot: true,
      // uid and gid of `node` in the official Node.js images the Dockerfile builds on.
      runAsUser: 1000,
      runAsGroup: 1000,
      fsGroup: 1000,
      seccompProfile: { type: 'RuntimeDefault' },
    });
    expect(container.securityContext).toEqual({
      runAsNonRoot: true,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
    });
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(pod.enableServiceLinks).toBe(false);
    expect(named(objects, 'ServiceAccount', pod.serviceAccountName)).toBeDefined();
  });

  it('reads the LiveKit key and secret from Secret files readable by its group only', () => {
    expect(config.livekit.key).toBe(secretValue(everything, 'lastwill-livekit', 'key'));
    expect(config.livekit.secret).toBe(secretValue(everything, 'lastwill-livekit', 'secret'));
    // Neither value is in the pod spec's environment: only the paths of the files are.
    expect(Object.values(composed.env)).not.toContain(config.livekit.secret);
    const volume = pod.volumes?.find((v) => v.secret?.secretName === 'lastwill-livekit');
    expect(volume?.secret?.defaultMode).toBe(0o440);
    expect(container.volumeMounts?.find((m) => m.name === volume?.name)?.readOnly).toBe(true);
  });

  it("sets only variables the agent reads, by lk-jwt-service's names where it has them, none shadowed", () => {
    const read = namesTheAgentReads();
    expect(composed.fromManifest.filter((name) => !read.has(name))).toEqual([]);
    const wrongName: string[] = [];
    const shadowed: string[] = [];
    for (const info of settings) {
      const aliases = info.setting.aliases ?? [];
      const setHere = (name: string) => composed.fromManifest.includes(name);
      if (setHere(info.envName) && aliases.some((a) => !a.deprecated)) wrongName.push(info.envName);
      wrongName.push(...aliases.filter((a) => a.deprecated && setHere(a.name)).map((a) => a.name));
      // The loader takes the first name set (canonical, then aliases) and ignores the others.
      const setNames = [info.envName, ...aliases.map((a) => a.name)].filter((n) => composed.env[n] !== undefined);
      if (setNames.length > 1) shadowed.push(setNames.join(' hides '));
    }
    expect(wrongName).toEqual([]);
    expect(shadowed).toEqual([]);
  });

  it('takes its non-secret settings from the ConfigMap', () => {
    const configMap = objects.find((o) => o.kind === 'ConfigMap') as IConfigMap;
    expect(container.envFrom).toEqual([{ configMapRef: { name: configMap.metadata!.name } }]);
    expect(config.livekit.url).toBe(configMap.data!.LIVEKIT_URL);
    expect(config.full_access_homeservers).toEqual([configMap.data!.LIVEKIT_FULL_ACCESS_HOMESERVERS]);
  });

  it('asks for resources and is bounded by limits', () => {
    const { requests, limits } = container.resources ?? {};
    expect(Object.keys(requests ?? {}).sort()).toEqual(['cpu', 'memory']);
    expect(Object.keys(limits ?? {}).sort()).toEqual(['cpu', 'memory']);
  });

  if (variant === 'single') {
    it('runs one writer of the SQLite store: one replica, replaced by Recreate', () => {
      expect(deployment!.spec!.replicas).toBe(1);
      expect(deployment!.spec!.strategy).toEqual({ type: 'Recreate' });
      expect(config.redis_url).toBeUndefined();
    });

    it("keeps the store on a persistent volume at the image's data directory", () => {
      expect(config.data_dir).toBe(image.env.LASTWILL_DEFAULT_AGENT_DATA_DIR);
      const mount = container.volumeMounts?.find((m) => m.mountPath === config.data_dir);
      const claimName = pod.volumes?.find((v) => v.name === mount?.name)?.persistentVolumeClaim?.claimName;
      const [claim] = find<IPersistentVolumeClaim>('PersistentVolumeClaim');
      expect(claimName).toBe(claim!.metadata!.name);
      expect(claim!.spec!.accessModes).toEqual(['ReadWriteOnce']);
    });

    it('gives SQLite a writable /tmp on the read-only root', () => {
      const mount = container.volumeMounts?.find((m) => m.mountPath === '/tmp');
      expect(pod.volumes?.find((v) => v.name === mount?.name)?.emptyDir).toBeDefined();
    });
  } else {
    it('runs three replicas on Redis, named after their pods, without a volume of their own', () => {
      expect(deployment!.spec!.replicas).toBe(3);
      expect(deployment!.spec!.strategy?.type).toBe('RollingUpdate');
      expect(config.redis_url).toBe(secretValue(everything, 'lastwill-redis', 'url'));
      expect(config.cluster.replica_id).toBe(POD_NAME);
      expect(find('PersistentVolumeClaim')).toEqual([]);
      expect(pod.volumes?.filter((v) => v.secret === undefined)).toEqual([]);
    });

    it('keeps two of the three replicas through voluntary disruptions', () => {
      const [pdb] = find<IPodDisruptionBudget>('PodDisruptionBudget');
      expect(selects(pdb!.spec!.selector?.matchLabels)).toBe(true);
      expect(pdb!.spec!.maxUnavailable).toBe(1);
    });

    it('spreads the replicas over nodes', () => {
      const byNode = pod.topologySpreadConstraints?.find((c) => c.topologyKey === 'kubernetes.io/hostname');
      expect(byNode).toMatchObject({ maxSkew: 1, whenUnsatisfiable: 'DoNotSchedule' });
      expect(selects(byNode?.labelSelector?.matchLabels)).toBe(true);
    });
  }
});
