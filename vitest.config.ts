import { defineConfig } from 'vitest/config';

/**
 * TEST_MODE=managed runs the feature suites against a server that behaves
 * like a managed service (see test/helpers/global-setup.ts), plus the
 * managed-only suites (dump and restore with the server's own pg_dump, the
 * README's managed set-up); `npm run test:managed` sets it up.
 */
const managed = process.env.TEST_MODE === 'managed';
const MANAGED_SUITES = [
  'durable', 'monitoring', 'crash', 'cancel', 'new-start-role', 'new-start-limit', 'start-checks',
  'dsl', 'step-login', 'clients', 'schema', 'copy', 'protocol', 'tls', 'smoke', 'robustness', 'parked', 'retention', 'history',
  'graph-validation', 'signals', 'schedules', 'http-steps', 'explain', 'cron-sql', 'metrics', 'console',
].map((name) => `test/integration/${name}.test.ts`);

export default defineConfig({
  test: {
    include: managed ? [...MANAGED_SUITES, 'test/managed/**/*.test.ts'] : ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    // Integration tests start servers and real clients; give them room on a 2-core machine.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
  },
});
