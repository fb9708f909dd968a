import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Builds dist/ once for the tests that run the real CLI as a child process.
    globalSetup: ['test/support/build.ts'],
    // Real servers and child processes: generous bounds, never retries (flakiness gets fixed).
    testTimeout: 30_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    retry: 0,
    projects: [
      { extends: true, test: { name: 'main', include: ['test/**/*.test.ts'] } },
      // The lk-jwt-service contract once more, with the agent in cluster mode (one replica on Redis).
      {
        extends: true,
        test: { name: 'blackbox-cluster', include: ['test/agent/blackbox/*.test.ts'], env: { LASTWILL_BLACKBOX_CLUSTER: '1' } },
      },
    ],
  },
});
