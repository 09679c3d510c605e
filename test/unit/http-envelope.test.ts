// Response body encoding (text or base64) and error previews.
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { encodeBody, errorPreview, statusMessage } from '../../src/http/index.js';

const BINARY = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff]);
const LATIN1 = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // "café" in ISO-8859-1, invalid UTF-8

describe('encodeBody', () => {
  it.each([
    ['text/plain', 'héllo', 'text'],
    ['TEXT/HTML; charset=UTF-8', '<p>hi</p>', 'text'],
    ['text/csv', 'a,b\n1,2', 'text'],
    ['application/json', '{"a":1}', 'text'],
    ['application/problem+json', '{"title":"x"}', 'text'],
    ['application/xml', '<a/>', 'text'],
    ['application/atom+xml', '<feed/>', 'text'],
    ['application/javascript', 'f()', 'text'],
    ['application/ecmascript', 'f()', 'text'],
    ['application/x-www-form-urlencoded', 'a=1&b=2', 'text'],
    ['application/graphql', '{ a }', 'text'],
    ['application/yaml', 'a: 1', 'text'],
    ['application/x-yaml', 'a: 1', 'text'],
    ['application/vnd.api+yaml', 'a: 1', 'text'],
    ['application/octet-stream', 'plain utf-8', 'text'], // undeclared text: clean UTF-8 stays text
    [undefined, 'no type at all', 'text'],
    ['not a media type', 'still utf-8', 'text'],
  ] as const)('%s: %j is %s', (type, body, encoding) => {
    expect(encodeBody(Buffer.from(body), type)).toEqual({ body, encoding });
  });

  it('base64-encodes bodies that are not clean UTF-8 unless declared text', () => {
    expect(encodeBody(BINARY, 'image/png')).toEqual({ body: BINARY.toString('base64'), encoding: 'base64' });
    expect(encodeBody(BINARY, undefined)).toEqual({ body: BINARY.toString('base64'), encoding: 'base64' });
    expect(encodeBody(LATIN1, 'application/octet-stream').encoding).toBe('base64');
    // valid UTF-8 with a NUL byte is binary when undeclared
    expect(encodeBody(Buffer.from('a\0b'), undefined)).toEqual({ body: Buffer.from('a\0b').toString('base64'), encoding: 'base64' });
  });

  it('decodes declared text in its charset', () => {
    expect(encodeBody(LATIN1, 'text/plain; charset=ISO-8859-1')).toEqual({ body: 'café', encoding: 'text' });
    expect(encodeBody(LATIN1, 'text/plain; charset="latin1"')).toEqual({ body: 'café', encoding: 'text' });
    expect(encodeBody(Buffer.from('hi', 'utf16le'), 'application/json; charset=utf-16le')).toEqual({ body: 'hi', encoding: 'text' });
    expect(encodeBody(Buffer.from([0x82, 0xa0]), 'text/plain; charset=shift_jis')).toEqual({ body: 'あ', encoding: 'text' });
  });

  it('reads unknown charsets as UTF-8 and invalid declared text with replacement characters', () => {
    expect(encodeBody(Buffer.from('é'), 'text/plain; charset=x-made-up')).toEqual({ body: 'é', encoding: 'text' });
    expect(encodeBody(LATIN1, 'text/plain')).toEqual({ body: 'caf\uFFFD', encoding: 'text' });
    expect(encodeBody(BINARY, 'application/json').encoding).toBe('text');
  });

  it('encodes an empty body as empty text', () => {
    expect(encodeBody(Buffer.alloc(0), 'image/png')).toEqual({ body: '', encoding: 'text' });
  });
});

describe('errorPreview', () => {
  it('keeps short bodies whole', () => {
    expect(errorPreview('not found', 'text')).toBe('not found');
    expect(errorPreview('x'.repeat(512), 'text')).toBe('x'.repeat(512));
  });

  it('cuts at 512 bytes on a character boundary', () => {
    expect(errorPreview('x'.repeat(600), 'text')).toBe(`${'x'.repeat(512)}…`);
    // 511 ASCII bytes then a 3-byte character straddling byte 512: the character goes
    const preview = errorPreview(`${'x'.repeat(511)}€€`, 'text');
    expect(preview).toBe(`${'x'.repeat(511)}…`);
    expect(errorPreview('é'.repeat(300), 'text')).toBe(`${'é'.repeat(256)}…`);
  });

  it('describes binary bodies by size', () => {
    expect(errorPreview(Buffer.alloc(1000).toString('base64'), 'base64')).toBe('<1000 bytes of binary data>');
  });

  it('words a status failure', () => {
    expect(statusMessage('post', 'https://api.example.com/x', { status: 503, body: 'busy', encoding: 'text' })).toBe(
      'HTTP POST https://api.example.com/x returned 503: busy',
    );
    expect(statusMessage('GET', 'https://api.example.com/', { status: 500, body: '', encoding: 'text' })).toBe(
      'HTTP GET https://api.example.com/ returned 500',
    );
  });
});

describe('compressed bodies', () => {
  it('a Content-Encoding other than identity keeps the bytes as base64, whatever the Content-Type says', () => {
    const gz = gzipSync(Buffer.from('{"a": 1}'));
    expect(encodeBody(gz, 'application/json', 'gzip')).toEqual({ body: gz.toString('base64'), encoding: 'base64' });
    expect(encodeBody(Buffer.from('plain'), 'text/plain', 'identity')).toEqual({ body: 'plain', encoding: 'text' });
  });
});
