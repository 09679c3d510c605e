// Message builders and the cheap inspections the relay makes.
import { describe, expect, it } from 'vitest';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import {
  AUTH_SASL,
  errorResponse,
  errorSeverity,
  mentionsDf,
  parseStartupParams,
  saslClaimsNoServerBinding,
  withoutChannelBinding,
} from '../../src/proxy/protocol.js';

const query = (text: string): Buffer => {
  const body = Buffer.from(text + '\0');
  const out = Buffer.alloc(5 + body.length);
  out[0] = 0x51;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
};

function parse(b: Buffer): BackendMessage[] {
  const out: BackendMessage[] = [];
  new Parser().parse(b, (m) => out.push(m));
  return out;
}

describe('mentionsDf', () => {
  it.each([
    `SELECT df.start('SELECT 1')`,
    `select DF.status(1)`,
    `SELECT "df".start('x')`,
    `SELECT * FROM df.instances`,
    `SELECT(df.sql('x'))`,
    `CALL df.x()`,
  ])('sees %s', (text) => expect(mentionsDf(query(text))).toBe(true));

  it.each([
    `SELECT 1`,
    `SELECT pdf.x FROM pdf`,
    `SELECT my_df.x FROM my_df`,
    `SELECT 'df' AS d`,
    `SELECT 1.5, df`,
    `SELECT $df.x`,
  ])('ignores %s', (text) => expect(mentionsDf(query(text))).toBe(false));
});

describe('errorResponse', () => {
  it('builds an ErrorResponse a client parses, with severity, code, position and hint', () => {
    const [m] = parse(errorResponse({ severity: 'FATAL', code: '08P01', message: 'bad', hint: 'do better', position: 7 }));
    expect(m).toMatchObject({ name: 'error', severity: 'FATAL', code: '08P01', message: 'bad', hint: 'do better', position: '7' });
    expect(errorSeverity(errorResponse({ severity: 'ERROR', code: '22012', message: 'x' }))).toBe('ERROR');
  });
});

describe('SASL', () => {
  const sasl = (mechs: string[]): Buffer => {
    const body = Buffer.from(mechs.map((m) => m + '\0').join('') + '\0');
    const out = Buffer.alloc(9 + body.length);
    out[0] = 0x52;
    out.writeInt32BE(8 + body.length, 1);
    out.writeInt32BE(AUTH_SASL, 5);
    body.copy(out, 9);
    return out;
  };
  it('withoutChannelBinding removes -PLUS mechanisms and keeps a well-formed message', () => {
    const [m] = parse(withoutChannelBinding(sasl(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'])));
    expect(m).toMatchObject({ name: 'authenticationSASL', mechanisms: ['SCRAM-SHA-256'] });
    const plain = sasl(['SCRAM-SHA-256']);
    expect(withoutChannelBinding(plain)).toBe(plain);
  });

  it('saslClaimsNoServerBinding reads the GS2 flag of a SASLInitialResponse', () => {
    const initial = (data: string): Buffer => {
      const mech = Buffer.from('SCRAM-SHA-256\0');
      const d = Buffer.from(data);
      const out = Buffer.alloc(5 + mech.length + 4 + d.length);
      out[0] = 0x70;
      out.writeInt32BE(out.length - 1, 1);
      mech.copy(out, 5);
      out.writeInt32BE(d.length, 5 + mech.length);
      d.copy(out, 9 + mech.length);
      return out;
    };
    expect(saslClaimsNoServerBinding(initial('y,,n=*,r=abc'))).toBe(true);
    expect(saslClaimsNoServerBinding(initial('n,,n=*,r=abc'))).toBe(false);
    expect(saslClaimsNoServerBinding(initial(''))).toBe(false);
  });
});

describe('parseStartupParams', () => {
  it('reads name/value pairs and rejects a missing terminator', () => {
    expect(parseStartupParams(Buffer.from('user\0bob\0database\0db\0\0'))).toEqual(
      new Map([
        ['user', 'bob'],
        ['database', 'db'],
      ]),
    );
    expect(parseStartupParams(Buffer.from('user\0bob\0'))).toBeUndefined();
  });
});
