import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Builds dist/ once for the tests that run the real CLI as a child process.
    globalSetup: ['test/support/build.ts'],
    // Real servers and child processes: generous bounds, never retries (flakiness gets fixed).
    testTimeout: 30_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    retry: 0,
  },
});
